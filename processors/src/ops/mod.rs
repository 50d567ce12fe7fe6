pub mod dlq;
pub mod replay;
