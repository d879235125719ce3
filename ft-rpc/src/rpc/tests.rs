//! Unit tests of the RPC core.
