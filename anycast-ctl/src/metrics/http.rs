//! The smallest HTTP/1.1 server Prometheus needs: `GET /metrics` (and `HEAD`), one connection
//! at a time, `Connection: close` after each response.
//!
//! Invariants:
//! - A request head is read up to [`MAX_REQUEST`] bytes and [`IO_TIMEOUT`]; a longer or slower
//!   one is answered 431 or dropped, so no client can hold the server or its memory.
//! - Only `/metrics` exists (404 elsewhere, 405 for methods other than GET and HEAD); a request
//!   that is not HTTP/1.x is answered 400.
//! - The body is OpenMetrics 1.0.0 when the client's `Accept` asks for
//!   `application/openmetrics-text` (as Prometheus does), else the Prometheus text format 0.0.4.
//! - A scrape that fails (nothing attached, say) is answered 503 with the one-line error; the
//!   server keeps running.
use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::Format;
use crate::{Error, Result, net::Netlink, pin::PinDir};

/// The content type of every answer but a scrape's.
const PLAIN: &str = "text/plain; charset=utf-8";
/// Largest request head read (request line and headers).
pub const MAX_REQUEST: usize = 8192;
/// Bound on reading a request and on writing its response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// HEAD: the headers of the GET response, without its body.
    pub head_only: bool,
    pub format: Format,
}

/// A response status with its reason phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u16, pub &'static str);

pub const OK: Status = Status(200, "OK");
pub const BAD_REQUEST: Status = Status(400, "Bad Request");
pub const NOT_FOUND: Status = Status(404, "Not Found");
pub const METHOD_NOT_ALLOWED: Status = Status(405, "Method Not Allowed");
pub const TOO_LARGE: Status = Status(431, "Request Header Fields Too Large");
pub const UNAVAILABLE: Status = Status(503, "Service Unavailable");

/// Binds the listening socket (before anything else changes, so a taken port fails first).
pub fn bind(addr: std::net::SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| Error::io(format!("listening for metrics on {addr}"), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("setting the metrics socket non-blocking", e))?;
    Ok(listener)
}

/// Answers scrapes until the task is dropped.
pub async fn serve(listener: std::net::TcpListener, pin: PinDir, nl: Netlink) -> Result<()> {
    let listener = TcpListener::from_std(listener)
        .map_err(|e| Error::io("registering the metrics socket", e))?;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = answer(stream, &pin, &nl).await {
            tracing::debug!(error = %e, "metrics connection");
        }
    }
}

/// Reads one request from `stream` and writes its response.
async fn answer(mut stream: TcpStream, pin: &PinDir, nl: &Netlink) -> std::io::Result<()> {
    let head = tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request too slow"))??;
    let (status, content_type, body, head_only) = match head.and_then(|h| parse(&h)) {
        Ok(request) => match super::scrape(pin, nl, request.format).await {
            Ok(body) => {
                let content_type = request.format.content_type();
                (OK, content_type, body, request.head_only)
            }
            Err(e) => (UNAVAILABLE, PLAIN, format!("{e}\n"), request.head_only),
        },
        Err(status) => (status, PLAIN, format!("{}\n", status.1), false),
    };
    let head = response_head(status, content_type, body.len());
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(head.as_bytes()).await?;
        if !head_only {
            stream.write_all(body.as_bytes()).await?;
        }
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response too slow"))?
}

/// The request head, up to and including the blank line; 431 past [`MAX_REQUEST`] bytes.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Result<Vec<u8>, Status>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(Err(BAD_REQUEST));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&head, b"\r\n\r\n") {
            head.truncate(end);
            return Ok(Ok(head));
        }
        if head.len() > MAX_REQUEST {
            return Ok(Err(TOO_LARGE));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a request head (without its final blank line).
pub fn parse(head: &[u8]) -> Result<Request, Status> {
    let text = std::str::from_utf8(head).map_err(|_| BAD_REQUEST)?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD_REQUEST);
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") || !target.starts_with('/') {
        return Err(BAD_REQUEST);
    }
    let mut openmetrics = false;
    for header in lines {
        let (name, value) = header.split_once(':').ok_or(BAD_REQUEST)?;
        if name.eq_ignore_ascii_case("accept") {
            openmetrics |= value.contains("application/openmetrics-text");
        }
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Err(NOT_FOUND);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(METHOD_NOT_ALLOWED),
    };
    Ok(Request {
        head_only,
        format: if openmetrics {
            Format::OpenMetrics
        } else {
            Format::Text
        },
    })
}

/// A response's status line and headers, up to the blank line before its body of
/// `content_length` bytes.
pub fn response_head(status: Status, content_type: &str, content_length: usize) -> String {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {content_length}\r\nConnection: close\r\n",
        status.0, status.1,
    );
    if status == METHOD_NOT_ALLOWED {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Result<Request, Status> {
        parse(text.as_bytes())
    }

    #[test]
    fn get_metrics_negotiates_the_format() {
        let prometheus = "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        assert_eq!(
            request(prometheus),
            Ok(Request {
                head_only: false,
                format: Format::OpenMetrics
            })
        );
        let plain = request("GET /metrics?x=1 HTTP/1.0\r\naccept: */*").unwrap();
        assert_eq!(plain.format, Format::Text);
        assert!(request("HEAD /metrics HTTP/1.1").unwrap().head_only);
    }

    #[test]
    fn other_paths_methods_and_garbage_are_refused() {
        assert_eq!(request("GET / HTTP/1.1"), Err(NOT_FOUND));
        assert_eq!(request("GET /metricsx HTTP/1.1"), Err(NOT_FOUND));
        assert_eq!(request("POST /metrics HTTP/1.1"), Err(METHOD_NOT_ALLOWED));
        for bad in [
            "",
            "GET /metrics",
            "GET /metrics HTTP/2",
            "GET  /metrics HTTP/1.1",
            "GET metrics HTTP/1.1",
            "GET /metrics HTTP/1.1\r\nno colon",
        ] {
            assert_eq!(request(bad), Err(BAD_REQUEST), "{bad:?}");
        }
        assert_eq!(parse(&[0xff, 0xfe]), Err(BAD_REQUEST));
    }

    #[test]
    fn responses_carry_length_and_close() {
        assert_eq!(
            response_head(NOT_FOUND, "text/plain", 10),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
        );
        assert!(
            response_head(METHOD_NOT_ALLOWED, "text/plain", 3).contains("\r\nAllow: GET, HEAD\r\n")
        );
    }
}
