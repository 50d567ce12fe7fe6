//! Benchmarks for the pipeline. `benches/micro.rs` holds the criterion
//! micro-benchmarks (signature verification, envelope encoding); the
//! end-to-end load benchmark comes with its own issue. Run with
//! `cargo bench -p pipeline-benches`; figures go to BENCHMARKS.md.
