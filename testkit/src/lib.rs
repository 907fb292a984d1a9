//! Test tooling for tenant-migrator: real servers started on free loopback ports
//! (Debian's `redis-server`, the tenant-config API stand-in, Neo4j 4.4 as the Bolt server), a LightRAG-shaped
//! fixture generator, database digests, and a delay proxy for round-trip tests.
//!
//! Used by the integration tests, the benchmark and the demo. Never by the product.

pub mod bolt_server;
pub mod config_api;
pub mod fixture;
pub mod graph_fixture;
pub mod proxy;
pub mod qdrant_fixture;
pub mod qdrant_server;
pub mod redis_server;

pub use bolt_server::BoltServer;
pub use config_api::ConfigApi;
pub use proxy::DelayProxy;
pub use qdrant_server::QdrantServer;
pub use redis_server::RedisServer;

/// A free TCP port on 127.0.0.1 (the OS picks it; the listener is closed before use).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
