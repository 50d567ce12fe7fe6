//! Shared by the test binaries that each need their own global allocator.

/// A current-thread runtime and a producer whose broker never answers (no
/// broker listens on port 1): every record it is handed stays queued in
/// librdkafka until its delivery timeout, a minute, past any test.
pub fn unreachable_producer() -> (tokio::runtime::Runtime, ingest::producer::KafkaProducer) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kafka = ingest::config::KafkaConfig {
        brokers: "127.0.0.1:1".into(),
        delivery_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    };
    let server = ingest::config::ServerConfig::default();
    let producer = runtime.block_on(async {
        ingest::producer::KafkaProducer::new(
            &kafka,
            &server,
            ingest::metrics::Metrics::new().unwrap(),
        )
        .unwrap()
    });
    (runtime, producer)
}
