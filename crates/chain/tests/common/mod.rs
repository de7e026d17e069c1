//! Starts an embedded node with its RPC server on loopback, for the chain crate's tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use paychan_chain::{BitcoindRpc, RpcAuth};
use paychan_node::rpc::{cookie_path, Auth, RpcServer};
use paychan_node::Node;

pub struct Running {
    pub node: Node,
    pub url: String,
    pub cookie: PathBuf,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    pub fn rpc(&self) -> BitcoindRpc {
        BitcoindRpc::new(&self.url, RpcAuth::CookieFile(self.cookie.clone())).unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fresh node in a temporary data directory, serving RPC on 127.0.0.1 (a free port).
pub fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path()).unwrap();
    let cookie = cookie_path(dir.path());
    let auth = Auth::default().with_new_cookie(&cookie).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = RpcServer::new(node.clone(), auth);
    let stop = server.stop_signal();
    let thread = std::thread::spawn(move || {
        rt.block_on(server.serve(listener, std::future::pending())).unwrap();
    });
    Running { node, url, cookie, stop, thread: Some(thread), _dir: dir }
}
