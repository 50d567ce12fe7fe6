pub mod dlq;
pub mod replay;
pub mod topics;
