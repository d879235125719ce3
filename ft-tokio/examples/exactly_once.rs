//! Exactly-once across a crash: 40 increments, each applied once, though the server is
//! killed (SIGKILL) with calls in flight. `cargo run -p ft-tokio --example exactly_once`
use bytes::Bytes;
use ft_core::NodeId;
use ft_rpc::{handle::Reply, rpc::CallOptions, rpc::Semantics::ExactlyOnce};
use ft_tokio::{RpcNode, RpcNodeBuilder};
use futures::StreamExt;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::{error::Error, path::Path, time::Duration};

const SECOND: Duration = Duration::from_secs(1);

fn node(me: u64) -> RpcNodeBuilder {
    let at = |n: u64| ([127, 0, 0, 1], 47_120 + n as u16).into();
    RpcNode::builder(NodeId(me))
        .peer(NodeId(0), at(0))
        .peer(NodeId(1), at(1))
}

async fn server(dir: &Path) -> Result<(), Box<dyn Error>> {
    let prepared = node(0).data_dir(dir).open().await?;
    // The counter, rebuilt from the effects of earlier lives: one per call that ran.
    let total = Arc::new(Mutex::new(prepared.effects().len() as u64));
    let count = move |_, request: Bytes, _| {
        let mut total = total.lock().unwrap();
        *total += 1; // made durable with the call's completion record, atomically
        std::future::ready(Reply::with_effect(total.to_string().into(), request))
    };
    let _server = prepared.serve(count).await?;
    std::future::pending().await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    if let Some(dir) = std::env::args_os().nth(1) {
        return server(Path::new(&dir)).await; // this is the server's process
    }
    let dir = std::env::temp_dir().join(format!("ft-once-{}", std::process::id()));
    // No need to wait for the server to be up: the calls retransmit until answered.
    let exe = std::env::current_exe()?;
    let mut server = Command::new(&exe).arg(&dir).spawn()?;
    let node = node(1).client_only().await?;
    let (c, options) = (node.client(), CallOptions::within(ExactlyOnce, 30 * SECOND));
    let calls = (0..40).map(|i| c.call(NodeId(0), format!("+1 #{i}").into(), options));
    let mut replies = futures::stream::iter(calls).buffer_unordered(4).enumerate();
    let mut counter = 0;
    while let Some((n, reply)) = replies.next().await {
        counter = counter.max(String::from_utf8(reply?.to_vec())?.parse::<u64>()?);
        if n == 20 {
            server.kill().and_then(|_| server.wait())?; // SIGKILL, with calls in flight
            server = Command::new(&exe).arg(&dir).spawn()?;
        }
    }
    println!("40 increments, each applied exactly once: the counter reads {counter}");
    assert_eq!(counter, 40);
    server.kill()?;
    Ok(std::fs::remove_dir_all(dir)?)
}
