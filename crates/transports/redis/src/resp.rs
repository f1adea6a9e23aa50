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

/// One RESP2 reply.
fn parse(buf: &[u8], pos: usize) -> Result<Option<(Value, usize)>, String> {
    let Some(&tag) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(nl) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[pos + 1..pos + nl];
    let after = pos + nl + 2;
    let num = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
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
                match parse(buf, p)? {
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
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| io_err(std::io::ErrorKind::TimedOut.into()))?
            .map_err(io_err)?;
        stream.set_nodelay(true).map_err(io_err)?;
        self.stream = Some(stream);
        self.buf.clear();
        let settings = self.info.redis_settings().clone();
        if let Some(pw) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(pw);
            self.exchange(&auth.get_packed_command(), 1).await?;
        }
        if settings.db() != 0 {
            self.exchange(
                &redis::cmd("SELECT").arg(settings.db()).get_packed_command(),
                1,
            )
            .await?;
        }
        Ok(())
    }

    async fn exchange(&mut self, packed: &[u8], replies: usize) -> Result<Vec<Value>, RedisError> {
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(packed).await.map_err(io_err)?;
        let mut out = Vec::with_capacity(replies);
        let mut pos = 0;
        let mut first_error = None;
        while out.len() < replies {
            match parse(&self.buf, pos) {
                Ok(Some((v, next))) => {
                    out.push(v);
                    pos = next;
                    continue;
                }
                Ok(None) => {}
                Err(server) => {
                    // An error reply: skip its line and remember it.
                    let nl = self.buf[pos..]
                        .windows(2)
                        .position(|w| w == b"\r\n")
                        .unwrap_or(0);
                    pos += nl + 2;
                    first_error.get_or_insert(server);
                    out.push(Value::Nil);
                    continue;
                }
            }
            if self.buf.capacity() - self.buf.len() < 1 << 15 {
                self.buf.reserve(1 << 16);
            }
            let n = stream.read_buf(&mut self.buf).await.map_err(io_err)?;
            if n == 0 {
                return Err(io_err(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        self.buf.drain(..pos);
        if let Some(msg) = first_error {
            return Err(RedisError::from((
                ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                "server error",
                msg,
            )));
        }
        Ok(out)
    }

    /// Sends packed commands and returns their `replies` replies; reconnects first when the
    /// previous call failed. Any failure drops the connection.
    pub(crate) async fn query(
        &mut self,
        packed: &[u8],
        replies: usize,
        within: Duration,
    ) -> Result<Vec<Value>, RedisError> {
        if self.stream.is_none() {
            self.connect().await?;
        }
        match tokio::time::timeout(within, self.exchange(packed, replies)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                // Server errors leave the connection usable; anything else does not.
                if !e.to_string().contains("server error") {
                    self.stream = None;
                }
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(io_err(std::io::ErrorKind::TimedOut.into()))
            }
        }
    }
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
