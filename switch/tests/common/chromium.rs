//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for the dashboard
//! test: open a page, evaluate expressions in it, take a screenshot.
//!
//! The DevTools protocol runs over a WebSocket; the few lines of WebSocket a test needs (text
//! frames, client masking, extended lengths, continuation frames) are written out here rather
//! than pulling a WebSocket stack into the build.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium showing one page, killed when dropped.
pub struct Browser {
    child: Child,
    socket: TcpStream,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts Chromium on `url` (window `width` x `height`) and attaches to the page.
    pub async fn open(url: &str, width: u32, height: u32) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: install Debian's `chromium` (scripts/setup.sh does)"
        );
        let profile = tempfile::tempdir().expect("profile directory");
        // The flags that keep Chromium from reaching for the (closed) network, and let it run
        // as root in a container.
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("stderr");
        let port = tokio::task::spawn_blocking(move || devtools_port(stderr)).await.expect("read stderr");
        let socket = attach(port, url).await;
        Browser { child, socket, next_id: 0, _profile: profile }
    }

    /// Calls a DevTools method and returns its `result`.
    pub async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = serde_json::json!({ "id": id, "method": method, "params": params }).to_string();
        send_text(&mut self.socket, &message).await;
        let reply = async {
            loop {
                let reply: serde_json::Value =
                    serde_json::from_str(&receive_text(&mut self.socket).await).expect("JSON");
                if reply["id"] == id {
                    return reply;
                }
                // Events and other replies are not ours.
            }
        };
        let reply = tokio::time::timeout(Duration::from_secs(30), reply).await.expect("DevTools answers in time");
        assert!(reply.get("error").is_none(), "{method} failed: {reply}");
        reply["result"].clone()
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    pub async fn evaluate(&mut self, expression: &str) -> serde_json::Value {
        let result =
            self.call("Runtime.evaluate", serde_json::json!({ "expression": expression, "returnByValue": true })).await;
        result["result"]["value"].clone()
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let result = self
            .call("Page.captureScreenshot", serde_json::json!({ "format": "png", "captureBeyondViewport": true }))
            .await;
        let data = result["data"].as_str().expect("screenshot data");
        base64::engine::general_purpose::STANDARD.decode(data).expect("base64 PNG")
    }
}

/// Chromium prints `DevTools listening on ws://127.0.0.1:PORT/...` once it is ready.
fn devtools_port(stderr: std::process::ChildStderr) -> u16 {
    use std::io::BufRead;
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.expect("chromium stderr");
        if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
            return rest.split('/').next().and_then(|port| port.parse().ok()).expect("DevTools port");
        }
    }
    panic!("chromium exited without opening DevTools");
}

/// Opens the WebSocket of the page target showing `url`.
async fn attach(port: u16, url: &str) -> TcpStream {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut target = None;
    for _ in 0..100 {
        if let Some((200, body)) = super::try_http_get(address, "/json/list").await {
            let targets: serde_json::Value = serde_json::from_str(&body).expect("targets JSON");
            target = targets.as_array().and_then(|targets| {
                targets
                    .iter()
                    .find(|target| {
                        target["type"] == "page" && target["url"].as_str().is_some_and(|u| u.starts_with(url))
                    })
                    .and_then(|target| target["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            if target.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let target = target.expect("the page's DevTools target");
    let path = target.splitn(4, '/').nth(3).map(|path| format!("/{path}")).expect("target path");
    let mut socket = TcpStream::connect(address).await.expect("connect to DevTools");
    let handshake = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    socket.write_all(handshake.as_bytes()).await.expect("handshake");
    let mut reader = BufReader::new(&mut socket);
    let mut status = String::new();
    reader.read_line(&mut status).await.expect("handshake answer");
    assert!(status.contains(" 101 "), "WebSocket refused: {status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("header");
        if line == "\r\n" {
            break;
        }
    }
    socket
}

/// One masked text frame (clients must mask; the key need not be secret here).
async fn send_text(socket: &mut TcpStream, text: &str) {
    let payload = text.as_bytes();
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81];
    match payload.len() {
        length @ 0..=125 => frame.push(0x80 | length as u8),
        length @ 126..=65_535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(index, byte)| byte ^ mask[index % 4]));
    socket.write_all(&frame).await.expect("send frame");
}

/// The next whole text message (continuation frames joined).
async fn receive_text(socket: &mut TcpStream) -> String {
    let mut message = Vec::new();
    loop {
        let mut head = [0u8; 2];
        socket.read_exact(&mut head).await.expect("frame head");
        let length = match head[1] & 0x7f {
            126 => {
                let mut bytes = [0u8; 2];
                socket.read_exact(&mut bytes).await.expect("length");
                u64::from(u16::from_be_bytes(bytes))
            }
            127 => {
                let mut bytes = [0u8; 8];
                socket.read_exact(&mut bytes).await.expect("length");
                u64::from_be_bytes(bytes)
            }
            length => u64::from(length),
        };
        let mut payload = vec![0u8; usize::try_from(length).expect("frame size")];
        socket.read_exact(&mut payload).await.expect("payload");
        let opcode = head[0] & 0x0f;
        if opcode == 0x9 || opcode == 0xA {
            continue; // ping/pong: nothing for us
        }
        message.extend_from_slice(&payload);
        if head[0] & 0x80 != 0 {
            return String::from_utf8(message).expect("UTF-8 message");
        }
    }
}
