//! Hello RPC over UDP: a server and a client in two processes.
//!
//! `cargo run -p ft-tokio --example hello_udp` starts the server as a child
//! process, calls it from this one, and stops it. The client gets a new
//! identity at every start, so running it again is always safe.
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use ft_core::NodeId;
use ft_rpc::rpc::{CallOptions, Semantics};
use ft_tokio::{RpcNode, RpcNodeBuilder};

const SERVER: NodeId = NodeId(0);
const CLIENT: NodeId = NodeId(1);

/// Both nodes, declared once: the same on both sides.
fn node(me: NodeId) -> RpcNodeBuilder {
    let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
    RpcNode::builder(me)
        .peer(SERVER, addr(47_100))
        .peer(CLIENT, addr(47_101))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("server") {
        let hello = |_, name: Bytes, _| async move {
            Bytes::from(format!("hello, {}", String::from_utf8_lossy(&name)))
        };
        let _server = node(SERVER).serve(hello).await?;
        println!("ready");
        std::future::pending::<()>().await; // serves until killed
    }
    let exe = std::env::current_exe()?;
    let mut server = Command::new(exe)
        .arg("server")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut ready)?;

    let client = node(CLIENT).client_only().await?;
    let options = CallOptions::within(Semantics::AtMostOnce, Duration::from_secs(5));
    let reply = client
        .client()
        .call(SERVER, Bytes::from("world"), options)
        .await?;
    println!("{}", String::from_utf8_lossy(&reply));
    assert_eq!(reply, Bytes::from("hello, world"));
    client.shutdown().await?;
    server.kill()?;
    server.wait()?;
    Ok(())
}
