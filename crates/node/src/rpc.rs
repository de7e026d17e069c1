//! bitcoind-compatible JSON-RPC server (to come in this module).
