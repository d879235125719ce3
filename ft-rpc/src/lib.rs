#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod channel;
pub mod echo;
pub mod handle;
pub mod rpc;
pub mod rtt;
#[cfg(test)]
mod testing;
