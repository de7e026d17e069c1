//! Helpers for the process-level tests: a child that is killed when dropped, and a node.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first stdout line of `child`, as JSON.
pub fn first_line(child: &mut Child) -> Value {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// `paychan node start` in `datadir` on a free loopback port: the process, its RPC URL and
/// its cookie file.
pub fn start_node(datadir: &Path) -> (Kill, String, PathBuf) {
    let mut node = Command::new(env!("CARGO_BIN_EXE_paychan"))
        .args(["--json", "node", "start", "--rpc-bind", "127.0.0.1:0", "--datadir"])
        .arg(datadir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let info = first_line(&mut node);
    let url = info["rpc_url"].as_str().unwrap().to_string();
    (Kill(node), url, datadir.join(".cookie"))
}

/// A plain HTTP/1.1 upstream on loopback answering `upstream says hi to <path>`; returns its
/// URL. The thread ends with the test process.
pub fn upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1_000) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
            let text = format!("upstream says hi to {path}\n");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    url
}

/// `paychan --home HOME --rpc-url URL --json --rpc-cookie COOKIE`, ready for arguments.
pub fn paychan(home: &Path, url: &str, cookie: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_paychan"));
    c.arg("--home").arg(home).args(["--rpc-url", url, "--json", "--rpc-cookie"]).arg(cookie);
    c
}

/// Runs `c`, which must succeed, and reads its stdout as JSON.
pub fn run(mut c: Command) -> Value {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}
