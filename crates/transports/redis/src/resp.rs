//! The read path's own connection: `XREADGROUP` replies parsed by a small RESP2 parser.
//!
//! Why: on large `XREADGROUP` replies (hundreds of entries of a dozen fields each), the generic
//! parser of redis-rs took 43% of the client's CPU in `dualbus bench throughput --backend
//! redis` (perf, 2026-11-26), and on a 2-core machine that CPU is taken from the Redis servers.
//! Commands are still built with redis-rs (`Cmd::get_packed_command`); only the socket and the
//! reply parsing are ours. Everything else (group setup, claims, dead letters) stays on
//! redis-rs's connection manager.
//!
//! The `XREADGROUP` reply itself is parsed straight into entries whose fields are slices of the
//! reply's buffer ([`parse_read`]): building a `redis::Value` tree first (an allocation per
//! field, then a copy per field into the entry) took more than half of each engine's CPU in a
//! profile of `dualbus run --backend redis` (perf, 2026-12-04). Replies of another shape take the
//! generic path.

use crate::reply::{self, Entry, StreamEntries};
use bytes::{Bytes, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection's byte stream: plain TCP or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

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

/// Arrays nested deeper than this are refused (a stream reply nests four deep).
const MAX_DEPTH: usize = 32;

/// A reply larger than this is refused and its connection dropped (Redis's own default limit
/// of one bulk string, `proto-max-bulk-len`).
const MAX_REPLY: usize = 512 << 20;

fn bad_header(line: &[u8]) -> String {
    format!(
        "bad RESP length {:?}",
        String::from_utf8_lossy(&line[..line.len().min(40)])
    )
}

impl Scanner {
    /// Where the reply starting at `start` ends, if the buffer holds all of it; an error for
    /// bytes that are not RESP2 (an unknown type byte, a bad length, arrays nested deeper than
    /// [`MAX_DEPTH`]).
    fn complete(&mut self, buf: &[u8], start: usize) -> Result<Option<usize>, String> {
        if !self.started {
            *self = Scanner {
                pos: start,
                open: Vec::new(),
                started: true,
            };
        }
        loop {
            let pos = self.pos;
            let Some(&tag) = buf.get(pos) else {
                return Ok(None);
            };
            let Some(nl) = line_end(buf, pos) else {
                return Ok(None);
            };
            let after = pos + nl + 2;
            let next = match tag {
                b'$' => {
                    let line = &buf[pos + 1..pos + nl];
                    let len = header_num(line).ok_or_else(|| bad_header(line))?;
                    if len < 0 {
                        after
                    } else {
                        let end = usize::try_from(len)
                            .ok()
                            .and_then(|l| after.checked_add(l)?.checked_add(2))
                            .ok_or_else(|| bad_header(line))?;
                        if buf.len() < end {
                            return Ok(None);
                        }
                        end
                    }
                }
                b'*' => {
                    let line = &buf[pos + 1..pos + nl];
                    let len = header_num(line).ok_or_else(|| bad_header(line))?;
                    if len > 0 {
                        if self.open.len() >= MAX_DEPTH {
                            return Err(format!(
                                "a RESP reply nested deeper than {MAX_DEPTH} arrays"
                            ));
                        }
                        self.open.push(len);
                        self.pos = after;
                        continue;
                    }
                    after
                }
                b'+' | b'-' | b':' => after,
                other => return Err(format!("unexpected RESP type byte {other:#x}")),
            };
            self.pos = next;
            // One element done: close every array it completes.
            loop {
                match self.open.last_mut() {
                    None => {
                        self.started = false;
                        return Ok(Some(next));
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

#[cfg(test)]
fn parse_with(
    scanner: &mut Scanner,
    buf: &[u8],
    pos: usize,
) -> Result<Option<(Value, usize)>, String> {
    if scanner.complete(buf, pos)?.is_none() {
        return Ok(None);
    }
    parse_value(buf, pos)
}

/// One reply as a `redis::Value` (the generic path: replies other than a stream read's).
fn parse_value(buf: &[u8], pos: usize) -> Result<Option<(Value, usize)>, String> {
    parse_value_in(buf, pos, 0)
}

fn parse_value_in(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Value, usize)>, String> {
    let Some(&tag) = buf.get(pos) else {
        return Ok(None);
    };
    if !matches!(tag, b'+' | b'-' | b':' | b'$' | b'*') {
        return Err(format!("unexpected RESP type byte {tag:#x}"));
    }
    if depth > MAX_DEPTH {
        return Err(format!(
            "a RESP reply nested deeper than {MAX_DEPTH} arrays"
        ));
    }
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
            let end = usize::try_from(len)
                .ok()
                .and_then(|l| after.checked_add(l))
                .ok_or_else(|| bad_header(line))?;
            if buf.len() < end.saturating_add(2) {
                return Ok(None);
            }
            Ok(Some((Value::BulkString(buf[after..end].to_vec()), end + 2)))
        }
        b'*' => {
            let len = num()?;
            if len < 0 {
                return Ok(Some((Value::Nil, after)));
            }
            let mut items = Vec::with_capacity((len as usize).min(1024));
            let mut p = after;
            for _ in 0..len {
                match parse_value_in(buf, p, depth + 1)? {
                    Some((v, next)) => {
                        items.push(v);
                        p = next;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Value::Array(items), p)))
        }
        _ => unreachable!("checked above"),
    }
}

/// Reads RESP2 elements from a complete reply (the scanner has seen all of it).
struct Cursor<'a> {
    frame: &'a Bytes,
    pos: usize,
}

impl Cursor<'_> {
    /// Room for `n` elements, but no more than the rest of the frame could hold (each takes
    /// at least 4 bytes): a header claiming billions of elements allocates nothing up front.
    fn capacity(&self, n: i64) -> usize {
        (n.max(0) as usize).min(self.frame.len().saturating_sub(self.pos) / 4)
    }

    /// The number in the header line of an element of type `tag`.
    fn header(&mut self, tag: u8) -> Option<i64> {
        if *self.frame.get(self.pos)? != tag {
            return None;
        }
        let nl = line_end(self.frame, self.pos)?;
        let n = header_num(&self.frame[self.pos + 1..self.pos + nl])?;
        self.pos += nl + 2;
        Some(n)
    }

    /// An array's length; `-1` for a nil array or a nil bulk string.
    fn array_or_nil(&mut self) -> Option<i64> {
        match self.frame.get(self.pos)? {
            b'*' => self.header(b'*'),
            b'$' => (self.header(b'$')? == -1).then_some(-1),
            _ => None,
        }
    }

    /// The header of a two-element array (a stream and its entries, an id and its fields).
    fn pair(&mut self) -> Option<()> {
        (self.header(b'*')? == 2).then_some(())
    }

    /// A bulk string, as a slice of the frame (no copy).
    fn bulk(&mut self) -> Option<Bytes> {
        let len = usize::try_from(self.header(b'$')?).ok()?;
        let end = self.pos.checked_add(len)?;
        if self.frame.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        let b = self.frame.slice(self.pos..end);
        self.pos = end + 2;
        Some(b)
    }
}

/// An `XREADGROUP` reply (RESP2: streams of `[key, [[id, [field, value, ...] or nil], ...]]`,
/// or nil on a timeout) starting at `pos` of a complete `frame`, straight into entries. `None`
/// when the reply has any other shape (an error, RESP3): the caller parses it generically.
pub(crate) fn parse_read(frame: &Bytes, pos: usize) -> Option<Vec<StreamEntries>> {
    let mut c = Cursor { frame, pos };
    let streams = c.array_or_nil()?;
    let mut out = Vec::with_capacity(c.capacity(streams));
    for _ in 0..streams {
        c.pair()?;
        let key = c.bulk()?;
        let n = c.array_or_nil()?;
        let mut entries = Vec::with_capacity(c.capacity(n));
        for _ in 0..n {
            c.pair()?;
            let raw_id = c.bulk()?;
            let id = reply::parse_id(&raw_id)?;
            let k = c.array_or_nil()?;
            let mut fields = Vec::with_capacity(c.capacity(k / 2));
            for _ in 0..k / 2 {
                let f = c.bulk()?;
                let v = c.bulk()?;
                fields.push((f, v));
            }
            if k > 0 && k % 2 == 1 {
                c.bulk()?;
            }
            entries.push(Entry {
                id,
                raw_id,
                fields,
                deleted: k < 0,
            });
        }
        out.push((key, entries));
    }
    Some(out)
}

/// A plain connection that sends packed commands and parses their replies.
pub(crate) struct RawConnection {
    info: ConnectionInfo,
    /// For `rediss://` addresses.
    tls: Option<Arc<rustls::ClientConfig>>,
    stream: Option<Box<dyn Stream>>,
    buf: BytesMut,
    timeout: Duration,
}

fn io_err(e: std::io::Error) -> RedisError {
    RedisError::from(e)
}

impl RawConnection {
    /// A connection to `info`'s server, with `tls` for a `rediss://` address (built once by
    /// the transport).
    pub(crate) fn new(
        info: ConnectionInfo,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> RawConnection {
        RawConnection {
            info,
            tls,
            stream: None,
            buf: BytesMut::with_capacity(1 << 16),
            timeout,
        }
    }

    async fn connect(&mut self) -> Result<(), RedisError> {
        let (host, port, tls) =
            match self.info.addr() {
                ConnectionAddr::Tcp(h, p) => (h.clone(), *p, None),
                ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: false,
                    ..
                } => {
                    let Some(config) = self.tls.clone() else {
                        return Err(RedisError::from((
                            ErrorKind::InvalidClientConfig,
                            "a rediss:// address without a TLS configuration",
                        )));
                    };
                    let name = crate::tls::server_name(host)?;
                    (host.clone(), *port, Some((config, name)))
                }
                other => return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "the read connection supports redis://host:port and rediss://host:port only",
                    format!("{other:?}"),
                ))),
            };
        let settings = self.info.redis_settings().clone();
        self.buf.clear();
        let buf = &mut self.buf;
        // Connect and authenticate within the timeout; keep the socket only once it is usable.
        let setup = async {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(io_err)?;
            tcp.set_nodelay(true).map_err(io_err)?;
            let mut stream: Box<dyn Stream> = match tls {
                None => Box::new(tcp),
                Some((config, name)) => Box::new(
                    tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await
                        .map_err(io_err)?,
                ),
            };
            let mut setup_cmds = Vec::new();
            if let Some(pw) = settings.password() {
                let mut auth = redis::cmd("AUTH");
                if let Some(user) = settings.username() {
                    auth.arg(user);
                }
                auth.arg(pw);
                setup_cmds.push(auth.get_packed_command());
            }
            if settings.db() != 0 {
                setup_cmds.push(redis::cmd("SELECT").arg(settings.db()).get_packed_command());
            }
            for packed in setup_cmds {
                let (frame, starts) = exchange(&mut stream, buf, &packed, 1, MAX_REPLY).await?;
                if let Some(e) = first_error(&frame, &starts) {
                    return Err(e);
                }
            }
            Ok::<_, RedisError>(stream)
        };
        let stream = tokio::time::timeout(self.timeout, setup)
            .await
            .map_err(|_| io_err(std::io::ErrorKind::TimedOut.into()))??;
        self.stream = Some(stream);
        Ok(())
    }

    /// Sends packed commands whose last is an `XREADGROUP`, and returns what it read;
    /// `replies` counts all of their replies. A server error in any reply is returned as the
    /// error (the first one). Reconnects first when the previous call failed. Any failure other
    /// than a server error drops the connection, and so does cancelling the call (the socket is
    /// owned by the call while it runs), so a later call never reads an earlier call's replies.
    pub(crate) async fn query_read(
        &mut self,
        packed: &[u8],
        replies: usize,
        within: Duration,
    ) -> Result<Vec<StreamEntries>, RedisError> {
        if self.stream.is_none() {
            self.connect().await?;
        }
        let mut stream = self.stream.take().expect("connected above");
        let (frame, starts) = match tokio::time::timeout(
            within,
            exchange(
                &mut stream,
                &mut self.buf,
                packed,
                replies.max(1),
                MAX_REPLY,
            ),
        )
        .await
        {
            Ok(Ok(got)) => {
                self.stream = Some(stream);
                got
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io_err(std::io::ErrorKind::TimedOut.into())),
        };
        if let Some(e) = first_error(&frame, &starts) {
            return Err(e);
        }
        let last = *starts.last().expect("at least one reply");
        if let Some(read) = parse_read(&frame, last) {
            return Ok(read);
        }
        let parse_err = |e: String| RedisError::from((ErrorKind::Parse, "XREADGROUP reply", e));
        let v = parse_value(&frame, last)
            .map_err(parse_err)?
            .map(|(v, _)| v)
            .unwrap_or(Value::Nil);
        reply::read_reply(v).map_err(parse_err)
    }
}

/// Writes `packed` and reads `replies` complete replies; returns their bytes (taken from
/// `buf`, which keeps whatever arrived after them) and where each starts. Bytes that are not
/// RESP, or more than `max_reply` of them without the replies completing, are an error (the
/// caller drops the connection).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    buf: &mut BytesMut,
    packed: &[u8],
    replies: usize,
    max_reply: usize,
) -> Result<(Bytes, Vec<usize>), RedisError> {
    stream.write_all(packed).await.map_err(io_err)?;
    let mut starts = Vec::with_capacity(replies);
    let mut pos = 0;
    let mut scanner = Scanner::default();
    let protocol = |why: String| RedisError::from((ErrorKind::Parse, "RESP reply", why));
    while starts.len() < replies {
        if let Some(next) = scanner.complete(buf, pos).map_err(protocol)? {
            starts.push(pos);
            pos = next;
            continue;
        }
        if buf.len() > max_reply {
            return Err(protocol(format!(
                "a reply larger than {max_reply} bytes; the connection is dropped"
            )));
        }
        if buf.capacity() - buf.len() < 1 << 15 {
            buf.reserve(1 << 16);
        }
        let n = stream.read_buf(buf).await.map_err(io_err)?;
        if n == 0 {
            return Err(io_err(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok((buf.split_to(pos).freeze(), starts))
}

/// The first error reply among the replies starting at `starts`, as the error to return.
fn first_error(frame: &[u8], starts: &[usize]) -> Option<RedisError> {
    let at = *starts.iter().find(|&&p| frame.get(p) == Some(&b'-'))?;
    let nl = line_end(frame, at).unwrap_or(1);
    let msg = String::from_utf8_lossy(&frame[at + 1..at + nl.max(1)]).into_owned();
    Some(RedisError::from((
        ErrorKind::Server(redis::ServerErrorKind::ResponseError),
        "server error",
        msg,
    )))
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
        let streams = crate::reply::read_reply(v).unwrap();
        assert_eq!(streams[0].0, &b"key"[..]);
        assert_eq!(
            streams[0].1[0].fields,
            vec![(Bytes::from("v"), Bytes::from("1"))]
        );
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

    /// Bytes that are not RESP are an error, never a panic or a wait for more: a bare line
    /// end, an unknown type byte, a bad length; and so is nesting beyond the depth limit (ten
    /// thousand nested arrays once aborted the process by recursion).
    #[test]
    fn malformed_replies_are_errors() {
        for bad in [
            &b"\r\n"[..],
            b"?x\r\n",
            b"$abc\r\n",
            b"*-x\r\n",
            b"$99999999999999999999\r\n",
        ] {
            let e = parse(bad, 0).expect_err(&format!("{bad:?}"));
            assert!(e.contains("RESP"), "{bad:?}: {e}");
        }
        let deep = b"*1\r\n".repeat(10_000);
        let e = parse(&deep, 0).unwrap_err();
        assert!(e.contains("nested deeper than 32"), "{e}");
        let mut ok = b"*1\r\n".repeat(30);
        ok.extend_from_slice(b":7\r\n");
        assert!(parse(&ok, 0).unwrap().is_some());
    }

    /// An error inside an array ends that reply only: the next reply is read whole, from its
    /// own first byte.
    #[test]
    fn an_error_inside_an_array_does_not_shift_later_replies() {
        let buf = b"*3\r\n:1\r\n-ERR inner\r\n$2\r\nab\r\n:5\r\n";
        let mut sc = Scanner::default();
        let first_end = sc.complete(buf, 0).unwrap().unwrap();
        assert_eq!(&buf[first_end..], b":5\r\n");
        assert_eq!(parse_value(buf, 0).unwrap_err(), "ERR inner");
        assert!(matches!(
            parse_value(buf, first_end).unwrap(),
            Some((Value::Int(5), _))
        ));
    }

    /// A reply that keeps growing past the limit is refused instead of filling memory.
    #[tokio::test]
    async fn a_reply_past_the_limit_is_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut cmd = [0u8; 64];
            let _ = s.read(&mut cmd).await;
            let _ = s.write_all(b"$1000000\r\n").await;
            let _ = s.write_all(&vec![b'x'; 200_000]).await;
            // Keep the socket open: the client must stop on its own.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut buf = BytesMut::new();
        let e = exchange(&mut stream, &mut buf, b"PING\r\n", 1, 100_000)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("larger than 100000 bytes"), "{e}");
        server.abort();
    }

    fn bulk(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
        out.extend_from_slice(b);
        out.extend_from_slice(b"\r\n");
    }

    /// Found by fuzzing: a header claiming 244,444,444,441 streams made the direct parser
    /// allocate for all of them before reading one (an abort); it now gives up on the frame.
    #[test]
    fn a_huge_count_allocates_nothing_up_front() {
        let frame = Bytes::from_static(b"*244444444441\r\n*2\r\n$22\r\ndualbus:t_dat");
        assert!(parse_read(&frame, 0).is_none());
        fuzzing::reply_readers(&frame);
    }

    /// The direct parser gives what the generic one gives, for replies with several streams,
    /// entries deleted while pending (nil fields), empty values and binary payloads; and gives
    /// up (so the generic path runs) on anything of another shape.
    #[test]
    fn direct_read_parser_matches_the_generic_one() {
        let mut r = b"*2\r\n".to_vec();
        r.extend_from_slice(b"*2\r\n");
        bulk(&mut r, b"dualbus:md:market_data");
        r.extend_from_slice(b"*3\r\n");
        for (i, payload) in [&b"{\"p\":1}"[..], b"", b"\r\n\x00\xff"].iter().enumerate() {
            r.extend_from_slice(b"*2\r\n");
            bulk(&mut r, format!("1700000000000-{i}").as_bytes());
            r.extend_from_slice(b"*4\r\n");
            bulk(&mut r, b"kind");
            bulk(&mut r, b"market_data");
            bulk(&mut r, b"payload");
            bulk(&mut r, payload);
        }
        r.extend_from_slice(b"*2\r\n");
        bulk(&mut r, b"dualbus:logic:risk_alert");
        r.extend_from_slice(b"*1\r\n*2\r\n");
        bulk(&mut r, b"5-7");
        r.extend_from_slice(b"*-1\r\n");
        let frame = Bytes::from(r.clone());
        let direct = parse_read(&frame, 0).expect("the expected shape");
        let (v, used) = parse(&r, 0).unwrap().unwrap();
        assert_eq!(used, r.len());
        let generic = reply::read_reply(v).unwrap();
        assert_eq!(direct.len(), 2);
        fuzzing::assert_same_entries(&direct, &generic);
        assert_eq!(direct[0].1[2].fields[1].1, &b"\r\n\x00\xff"[..]);
        assert!(direct[1].1[0].deleted);
        // A timeout's nil reply: nothing read.
        assert!(parse_read(&Bytes::from_static(b"*-1\r\n"), 0)
            .unwrap()
            .is_empty());
        // Other shapes: an error, a number, a stream item that is not a pair.
        for other in [
            &b"-NOGROUP no\r\n"[..],
            b":1\r\n",
            b"*1\r\n*1\r\n$1\r\nk\r\n",
        ] {
            assert!(
                parse_read(&Bytes::from_static(other), 0).is_none(),
                "{other:?}"
            );
        }
    }
}

/// The properties the fuzz targets and the property tests check on the reply readers.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// On any bytes: the generic parser, the scanner that delimits replies and the direct
    /// `XREADGROUP` parser never panic; a complete reply ends within the input, where the
    /// scanner says it ends; and when the direct parser reads entries, the generic path reads
    /// the same ones.
    pub fn reply_readers(data: &[u8]) {
        let parsed = parse_value(data, 0);
        let scanned = Scanner::default().complete(data, 0);
        if let Ok(Some((v, end))) = &parsed {
            assert!(*end <= data.len(), "a reply ends past the input");
            assert_eq!(
                scanned,
                Ok(Some(*end)),
                "the scanner and the parser disagree"
            );
            let frame = Bytes::copy_from_slice(&data[..*end]);
            if let Some(direct) = parse_read(&frame, 0) {
                let generic = reply::read_reply(v.clone())
                    .expect("what the direct parser reads, the generic one reads");
                assert_same_entries(&direct, &generic);
            }
        }
        // The direct parser alone, on whatever the input is.
        let _ = parse_read(&Bytes::copy_from_slice(data), 0);
    }

    /// The direct parser's entries are the generic path's: the same streams, ids, fields and
    /// deleted markers, in the same order.
    pub(crate) fn assert_same_entries(direct: &[StreamEntries], generic: &[StreamEntries]) {
        assert_eq!(direct.len(), generic.len());
        for ((dk, de), (gk, ge)) in direct.iter().zip(generic) {
            assert_eq!(dk, gk);
            assert_eq!(de.len(), ge.len());
            for (d, g) in de.iter().zip(ge) {
                assert_eq!(
                    (d.id, &d.raw_id, &d.fields, d.deleted),
                    (g.id, &g.raw_id, &g.fields, g.deleted)
                );
            }
        }
    }
}
