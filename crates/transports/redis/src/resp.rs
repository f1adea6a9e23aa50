//! The read path's own connection: `XREADGROUP` replies parsed by a small RESP2 parser.
//!
//! Why: on large `XREADGROUP` replies (hundreds of entries of a dozen fields each), the generic
//! parser of redis-rs took 43% of the client's CPU in `dualbus bench throughput --backend
//! redis` (perf, 2026-11-26), and on a 2-core machine that CPU is taken from the Redis servers.
//! Commands are still built with redis-rs (`Cmd::get_packed_command`); only the socket and the
//! reply parsing are ours. Everything else (group setup, claims, dead letters) stays on
//! redis-rs's connection manager.

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Offset of the `\r\n` ending the line that starts at `pos`.
fn line_end(buf: &[u8], pos: usize) -> Option<usize> {
    let mut i = pos;
    loop {
        let cr = buf[i..].iter().position(|&b| b == b'\r')? + i;
        if buf.get(cr + 1) == Some(&b'\n') {
            return Some(cr - pos);
        }
        if cr + 1 >= buf.len() {
            return None;
        }
        i = cr + 1;
    }
}

fn header_num(line: &[u8]) -> Option<i64> {
    let (neg, digits) = match line.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((d - b'0') as i64)?;
    }
    Some(if neg { -n } else { n })
}

/// Finds where a reply ends without building it, resuming where the previous call stopped, so
/// a large reply arriving in many reads is scanned once in all.
#[derive(Default)]
struct Scanner {
    /// Start of the next element to scan.
    pos: usize,
    /// Elements still expected by each open array.
    open: Vec<i64>,
    /// Whether a reply is being scanned.
    started: bool,
}

impl Scanner {
    /// Where the reply starting at `start` ends, if the buffer holds all of it.
    fn complete(&mut self, buf: &[u8], start: usize) -> Option<usize> {
        if !self.started {
            *self = Scanner {
                pos: start,
                open: Vec::new(),
                started: true,
            };
        }
        loop {
            let pos = self.pos;
            let &tag = buf.get(pos)?;
            let nl = line_end(buf, pos)?;
            let after = pos + nl + 2;
            let next = match tag {
                b'$' => {
                    let len = header_num(&buf[pos + 1..pos + nl])?;
                    if len < 0 {
                        after
                    } else {
                        let end = after + len as usize + 2;
                        if buf.len() < end {
                            return None;
                        }
                        end
                    }
                }
                b'*' => {
                    let len = header_num(&buf[pos + 1..pos + nl])?;
                    if len > 0 {
                        self.open.push(len);
                        self.pos = after;
                        continue;
                    }
                    after
                }
                _ => after,
            };
            self.pos = next;
            // One element done: close every array it completes.
            loop {
                match self.open.last_mut() {
                    None => {
                        self.started = false;
                        return Some(next);
                    }
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

/// One RESP2 reply, once the buffer holds all of it.
#[cfg(test)]
fn parse(buf: &[u8], pos: usize) -> Result<Option<(Value, usize)>, String> {
    parse_with(&mut Scanner::default(), buf, pos)
}

fn parse_with(
    scanner: &mut Scanner,
    buf: &[u8],
    pos: usize,
) -> Result<Option<(Value, usize)>, String> {
    if scanner.complete(buf, pos).is_none() {
        return Ok(None);
    }
    parse_value(buf, pos)
}

fn parse_value(buf: &[u8], pos: usize) -> Result<Option<(Value, usize)>, String> {
    let Some(&tag) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(nl) = line_end(buf, pos) else {
        return Ok(None);
    };
    let line = &buf[pos + 1..pos + nl];
    let after = pos + nl + 2;
    let num = || -> Result<i64, String> {
        header_num(line)
            .ok_or_else(|| format!("bad RESP number {:?}", String::from_utf8_lossy(line)))
    };
    match tag {
        b'+' => Ok(Some((
            Value::SimpleString(String::from_utf8_lossy(line).into_owned()),
            after,
        ))),
        b'-' => Err(String::from_utf8_lossy(line).into_owned()),
        b':' => Ok(Some((Value::Int(num()?), after))),
        b'$' => {
            let len = num()?;
            if len < 0 {
                return Ok(Some((Value::Nil, after)));
            }
            let end = after + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((Value::BulkString(buf[after..end].to_vec()), end + 2)))
        }
        b'*' => {
            let len = num()?;
            if len < 0 {
                return Ok(Some((Value::Nil, after)));
            }
            let mut items = Vec::with_capacity(len as usize);
            let mut p = after;
            for _ in 0..len {
                match parse_value(buf, p)? {
                    Some((v, next)) => {
                        items.push(v);
                        p = next;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Value::Array(items), p)))
        }
        other => Err(format!("unexpected RESP type byte {other:#x}")),
    }
}

/// A plain connection that sends packed commands and parses their replies.
pub(crate) struct RawConnection {
    info: ConnectionInfo,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

fn io_err(e: std::io::Error) -> RedisError {
    RedisError::from(e)
}

impl RawConnection {
    pub(crate) fn new(info: ConnectionInfo, timeout: Duration) -> RawConnection {
        RawConnection {
            info,
            stream: None,
            buf: Vec::with_capacity(1 << 16),
            timeout,
        }
    }

    async fn connect(&mut self) -> Result<(), RedisError> {
        let (host, port) = match self.info.addr() {
            ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
            other => {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "the read connection supports redis://host:port only",
                    format!("{other:?}"),
                )))
            }
        };
        let settings = self.info.redis_settings().clone();
        self.buf.clear();
        let buf = &mut self.buf;
        // Connect and authenticate within the timeout; keep the socket only once it is usable.
        let setup = async {
            let mut stream = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(io_err)?;
            stream.set_nodelay(true).map_err(io_err)?;
            if let Some(pw) = settings.password() {
                let mut auth = redis::cmd("AUTH");
                if let Some(user) = settings.username() {
                    auth.arg(user);
                }
                auth.arg(pw);
                exchange(&mut stream, buf, &auth.get_packed_command(), 1).await?;
            }
            if settings.db() != 0 {
                let select = redis::cmd("SELECT").arg(settings.db()).get_packed_command();
                exchange(&mut stream, buf, &select, 1).await?;
            }
            Ok::<_, RedisError>(stream)
        };
        let stream = tokio::time::timeout(self.timeout, setup)
            .await
            .map_err(|_| io_err(std::io::ErrorKind::TimedOut.into()))??;
        self.stream = Some(stream);
        Ok(())
    }

    /// Sends packed commands and returns their `replies` replies; reconnects first when the
    /// previous call failed. Any failure other than a server error drops the connection, and so
    /// does cancelling the call (the socket is owned by the call while it runs), so a later call
    /// never reads an earlier call's replies.
    pub(crate) async fn query(
        &mut self,
        packed: &[u8],
        replies: usize,
        within: Duration,
    ) -> Result<Vec<Value>, RedisError> {
        if self.stream.is_none() {
            self.connect().await?;
        }
        let mut stream = self.stream.take().expect("connected above");
        match tokio::time::timeout(
            within,
            exchange(&mut stream, &mut self.buf, packed, replies),
        )
        .await
        {
            Ok(Ok(v)) => {
                self.stream = Some(stream);
                Ok(v)
            }
            Ok(Err(e)) if e.to_string().contains("server error") => {
                self.stream = Some(stream);
                Err(e)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io_err(std::io::ErrorKind::TimedOut.into())),
        }
    }
}

/// Writes `packed` and reads `replies` replies into `buf`.
async fn exchange(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    packed: &[u8],
    replies: usize,
) -> Result<Vec<Value>, RedisError> {
    stream.write_all(packed).await.map_err(io_err)?;
    let mut out = Vec::with_capacity(replies);
    let mut pos = 0;
    let mut first_error = None;
    let mut scanner = Scanner::default();
    while out.len() < replies {
        match parse_with(&mut scanner, buf, pos) {
            Ok(Some((v, next))) => {
                out.push(v);
                pos = next;
                continue;
            }
            Ok(None) => {}
            Err(server) => {
                // An error reply: skip its line and remember it.
                let nl = line_end(buf, pos).unwrap_or(0);
                pos += nl + 2;
                first_error.get_or_insert(server);
                out.push(Value::Nil);
                continue;
            }
        }
        if buf.capacity() - buf.len() < 1 << 15 {
            buf.reserve(1 << 16);
        }
        let n = stream.read_buf(buf).await.map_err(io_err)?;
        if n == 0 {
            return Err(io_err(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    buf.drain(..pos);
    if let Some(msg) = first_error {
        return Err(RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "server error",
            msg,
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_replies_and_waits_for_more() {
        let full =
            b"*1\r\n*2\r\n$3\r\nkey\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nv\r\n$1\r\n1\r\n";
        let (v, used) = parse(full, 0).unwrap().unwrap();
        assert_eq!(used, full.len());
        let streams = crate::reply::read_reply(&v).unwrap();
        assert_eq!(streams[0].0, b"key");
        assert_eq!(streams[0].1[0].fields, vec![(b"v".to_vec(), b"1".to_vec())]);
        for cut in 0..full.len() {
            assert!(parse(&full[..cut], 0).unwrap().is_none(), "cut at {cut}");
        }
        // The same scanner, fed a growing buffer, resumes instead of starting over.
        let mut sc = Scanner::default();
        for cut in 0..full.len() {
            assert!(
                parse_with(&mut sc, &full[..cut], 0).unwrap().is_none(),
                "cut at {cut}"
            );
        }
        let (_, used) = parse_with(&mut sc, full, 0).unwrap().unwrap();
        assert_eq!(used, full.len());
        assert!(matches!(
            parse(b"*-1\r\n", 0).unwrap(),
            Some((Value::Nil, 5))
        ));
        assert!(matches!(
            parse(b":42\r\n", 0).unwrap(),
            Some((Value::Int(42), 5))
        ));
        assert_eq!(parse(b"-NOGROUP no\r\n", 0).unwrap_err(), "NOGROUP no");
    }
}
