//! What librdkafka holds for each record ingest hands it: the record's
//! metadata, not a second copy of its payload. The payload stays in the
//! request's answer slot, which the record's delivery report keeps alive,
//! so a record in flight costs its bytes once, and librdkafka's allocation
//! per record is small enough for glibc's per-thread cache (above about
//! 1 KiB glibc's `malloc` takes its bins' slow path; BENCHMARKS.md, step 15).
//!
//! Its own test binary: the Rust side allocates through mimalloc, as ingest
//! does, so glibc's own count (`mallinfo2`) holds only what the C code
//! (librdkafka) allocated.

mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bytes glibc's allocator has handed out and not had back, over all arenas.
fn glibc_in_use() -> usize {
    // SAFETY: `mallinfo2` only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    info.uordblks + info.hblkhd
}

#[test]
fn librdkafka_holds_a_record_without_copying_its_payload() {
    const PAYLOAD: usize = 16 * 1024;
    const RECORDS: usize = 200;
    let (runtime, producer) = common::unreachable_producer();
    let queue = |n: usize| {
        for i in 0..n {
            // The deadline is now: `deliver` queues the record and answers
            // a timeout at once; the record stays in librdkafka.
            let outcome = runtime.block_on(producer.deliver(
                format!("venue-{i}").as_bytes(),
                vec![b'x'; PAYLOAD],
                "purple",
                &format!("evt-{i}"),
                0,
                tokio::time::Instant::now(),
            ));
            assert_eq!(
                outcome,
                Err(ingest::producer::DeliveryError::Timeout),
                "record {i} was not queued"
            );
        }
    };
    // Warm up librdkafka's per-thread structures and the metric labels.
    queue(10);
    let before = glibc_in_use();
    queue(RECORDS);
    let after = glibc_in_use();
    assert_eq!(
        producer.queue_depth(),
        (10 + RECORDS) as i32,
        "records left the queue"
    );
    let per_record = after.saturating_sub(before) / RECORDS;
    assert!(
        per_record < 1024,
        "librdkafka holds {per_record} bytes per queued record of {PAYLOAD}: a copy of the payload"
    );
}
