//! `strait drain` and `strait wait`: the hooks of the injected Envoy container. They run
//! from the copy of the `strait` binary the init container leaves in the shared volume, so
//! the Envoy image needs no shell, curl or sleep.
//!
//! - `drain` (preStop): asks Envoy to drain its inbound listeners gracefully (new requests are
//!   still served, connections are told to close), then waits the drain period; the kubelet
//!   sends SIGTERM once it returns, and stock Envoy exits at once.
//! - `wait` (postStart, when the application is held): returns once Envoy is ready, so the
//!   kubelet starts the application containers after it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

/// Options of `strait drain`.
#[derive(Args, Debug)]
pub struct DrainArgs {
    /// Envoy's admin interface.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// How long Envoy keeps serving while it drains (`terminationDrainDuration`).
    #[arg(long, default_value = "5s")]
    duration: strait_api::Duration,
}

/// Options of `strait wait`.
#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Envoy's admin interface.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// How long to wait for Envoy to be ready.
    #[arg(long, default_value = "60s")]
    timeout: strait_api::Duration,
}

/// Sends one HTTP/1.1 request to Envoy's admin interface and returns the status code.
pub fn admin_request(admin: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&admin, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < head.len() {
        let read = s.read(&mut head[n..])?;
        if read == 0 {
            break;
        }
        n += read;
        if head[..n].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {line:?}")))
}

/// The drain request: inbound listeners only (the application may still call out while it
/// finishes), gracefully.
pub const DRAIN_PATH: &str = "/drain_listeners?inboundonly&graceful";

/// Runs `strait drain`.
pub fn run(args: DrainArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let drain = args.duration.get();
    match admin_request(args.admin, "POST", DRAIN_PATH) {
        Ok(code) if (200..300).contains(&code) => {
            eprintln!("strait drain: Envoy drains its inbound listeners for {drain:?}");
        }
        Ok(code) => eprintln!("strait drain: Envoy answered {code} to the drain request"),
        Err(e) => {
            eprintln!(
                "strait drain: Envoy's admin interface {} is unreachable: {e}",
                args.admin
            );
            return Ok(ExitCode::from(1));
        }
    }
    if let Some(rest) = drain.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `strait wait`.
pub fn run_wait(args: WaitArgs) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + args.timeout.get();
    loop {
        let last = match admin_request(args.admin, "GET", "/ready") {
            Ok(200) => {
                eprintln!("strait wait: Envoy is ready");
                return Ok(ExitCode::SUCCESS);
            }
            Ok(code) => format!("HTTP {code}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            eprintln!(
                "strait wait: Envoy not ready after {:?} ({last})",
                args.timeout.get()
            );
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::mpsc;

    use super::*;

    /// A one-connection fake admin interface answering `status`; sends back the request line.
    fn mk_admin(status: u16) -> (SocketAddr, mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let mut conn = conn;
                // Read the whole request: closing with unread bytes would reset the
                // connection before the client reads the answer.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 512];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let _ = tx.send(text.lines().next().unwrap_or_default().to_string());
                let _ = write!(conn, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            }
        });
        (addr, rx)
    }

    #[test]
    fn drain_asks_envoy_then_waits() {
        let (admin, requests) = mk_admin(200);
        let started = Instant::now();
        let code = run(DrainArgs {
            admin,
            duration: strait_api::Duration::from_millis(300),
        })
        .expect("runs");
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            requests.recv().expect("request"),
            format!("POST {DRAIN_PATH} HTTP/1.1")
        );
    }

    #[test]
    fn drain_without_envoy_does_not_wait() {
        let unused = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let started = Instant::now();
        let code = run(DrainArgs {
            admin: unused,
            duration: strait_api::Duration::from_secs(30),
        })
        .expect("runs");
        assert_eq!(code, ExitCode::from(1));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn wait_returns_when_ready_or_times_out() {
        let (ready, _) = mk_admin(200);
        let code = run_wait(WaitArgs {
            admin: ready,
            timeout: strait_api::Duration::from_secs(5),
        })
        .expect("runs");
        assert_eq!(code, ExitCode::SUCCESS);
        let (starting, _) = mk_admin(503);
        let code = run_wait(WaitArgs {
            admin: starting,
            timeout: strait_api::Duration::from_millis(600),
        })
        .expect("runs");
        assert_eq!(code, ExitCode::from(1));
    }
}
