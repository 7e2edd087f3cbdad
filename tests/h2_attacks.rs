//! HTTP/2 denial-of-service attacks on the gateway's downstream HTTP/2 server (h2c prior
//! knowledge on a plain listener), with hand-written frames over raw TCP: rapid reset
//! (CVE-2023-44487), CONTINUATION flood (CVE-2024-27316), PING / SETTINGS / WINDOW_UPDATE
//! floods (with and without reading the replies) and too many concurrent streams.
//!
//! The gateway runs in this process, so its memory is this process's VmRSS: every test
//! samples it during the attack and bounds the growth. Tests hold one lock so that no two
//! attacks (or their memory) overlap.

mod common;
use common::*;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// The longest any one phase may take.
const PHASE: Duration = Duration::from_secs(15);
/// How long a write may stay blocked before the attacker counts it as backpressure.
const BLOCKED: Duration = Duration::from_secs(2);
/// Largest accepted growth of the process's resident memory during one attack.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// One attack at a time: the memory figures are the whole process's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------
// A tiny HTTP/2 frame encoder (RFC 9113 §4.1, §6) and HPACK block builder (RFC 7541)
// ---------------------------------------------------------------------------------------

use common::h2::{
    CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, PREFACE, RST_STREAM, SETTINGS, WINDOW_UPDATE,
    put_frame as frame,
};
const ACK: u8 = 0x1;

const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The opaque data of the PING sent after a flood: its ACK proves everything before it was
/// processed.
const MARKER: u64 = 0xfeed_f00d_dead_beef;

fn reason(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "unknown",
    }
}

/// The client connection preface and an empty SETTINGS frame.
fn preface() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    settings(&mut out, &[]);
    out
}

fn settings(out: &mut Vec<u8>, params: &[(u16, u32)]) {
    let mut p = Vec::with_capacity(params.len() * 6);
    for (id, value) in params {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&value.to_be_bytes());
    }
    frame(out, SETTINGS, 0, 0, &p);
}

fn headers(out: &mut Vec<u8>, stream: u32, flags: u8, block: &[u8]) {
    frame(out, HEADERS, flags, stream, block);
}

fn continuation(out: &mut Vec<u8>, stream: u32, flags: u8, block: &[u8]) {
    frame(out, CONTINUATION, flags, stream, block);
}

fn data(out: &mut Vec<u8>, stream: u32, flags: u8, payload: &[u8]) {
    frame(out, DATA, flags, stream, payload);
}

fn rst_stream(out: &mut Vec<u8>, stream: u32, code: u32) {
    frame(out, RST_STREAM, 0, stream, &code.to_be_bytes());
}

fn ping(out: &mut Vec<u8>, opaque: u64) {
    frame(out, PING, 0, 0, &opaque.to_be_bytes());
}

fn window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    frame(out, WINDOW_UPDATE, 0, stream, &increment.to_be_bytes());
}

/// RFC 7541 §6.2.2: a literal field without indexing whose name is static-table entry
/// `index`, with a short value and no Huffman coding.
fn hpack_indexed_name(out: &mut Vec<u8>, index: u8, value: &[u8]) {
    assert!(index < 15 && value.len() < 127, "short forms only");
    out.push(index);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// A request's header block: `:method` GET (static entry 2, 0x82) or POST (3, 0x83),
/// `:scheme http` (6, 0x86), `:path /` (4, 0x84) or a literal path, `:authority` literal.
fn request_block(post: bool, path: &str) -> Vec<u8> {
    let mut b = vec![if post { 0x83 } else { 0x82 }, 0x86];
    if path == "/" {
        b.push(0x84);
    } else {
        hpack_indexed_name(&mut b, 4, path.as_bytes());
    }
    hpack_indexed_name(&mut b, 1, b"localhost");
    b
}

/// 16 KiB of HPACK: 128 literal fields (new name, without indexing) of 128 bytes each,
/// `x-flood: aaa…`, so each frame's block decodes on its own.
fn flood_block() -> Vec<u8> {
    let mut one = vec![0x00, 7];
    one.extend_from_slice(b"x-flood");
    let value_len = 128 - one.len() - 1;
    one.push(value_len as u8);
    one.resize(128, b'a');
    one.repeat(128)
}

// ---------------------------------------------------------------------------------------
// The attacker's socket: a reader task that parses what the gateway sends
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct GoAway {
    last_stream: u32,
    code: u32,
    debug: String,
    at: Duration,
}

/// What came back on the attacking connection.
#[derive(Debug, Default)]
struct Observed {
    bytes: u64,
    frames: u64,
    settings: u64,
    settings_acks: u64,
    ping_acks: u64,
    marker_acked: bool,
    /// RST_STREAM frames by error code.
    resets: HashMap<u32, u64>,
    /// Response heads by stream: the first byte of the block (0x88 is `:status: 200`).
    responses: HashMap<u32, u8>,
    /// Streams the gateway ended (END_STREAM on HEADERS or DATA).
    ended: HashSet<u32>,
    goaway: Option<GoAway>,
    /// When and how the gateway closed the connection (EOF or a read error).
    closed: Option<(Duration, String)>,
}

impl Observed {
    fn reset_count(&self, code: u32) -> u64 {
        self.resets.get(&code).copied().unwrap_or(0)
    }

    fn goaway_code(&self) -> Option<u32> {
        self.goaway.as_ref().map(|g| g.code)
    }

    fn summary(&self) -> String {
        let goaway = match &self.goaway {
            Some(g) => format!(
                "GOAWAY {} ({}) last_stream={} debug={:?} after {:?}",
                g.code,
                reason(g.code),
                g.last_stream,
                g.debug,
                g.at
            ),
            None => "no GOAWAY".to_string(),
        };
        let closed = match &self.closed {
            Some((at, how)) => format!("closed by the gateway ({how}) after {at:?}"),
            None => "still open".to_string(),
        };
        let mut resets: Vec<String> = self.resets.iter().map(|(code, n)| format!("{}x{n}", reason(*code))).collect();
        resets.sort();
        format!(
            "{goaway}; {closed}; {} bytes / {} frames in; SETTINGS {} (+{} ACKs); PING ACKs {}; \
             RST_STREAM [{}]; response heads {}",
            self.bytes,
            self.frames,
            self.settings,
            self.settings_acks,
            self.ping_acks,
            resets.join(", "),
            self.responses.len()
        )
    }

    fn take_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8], at: Duration) {
        self.frames += 1;
        match kind {
            SETTINGS if flags & ACK != 0 => self.settings_acks += 1,
            SETTINGS => self.settings += 1,
            PING if flags & ACK != 0 => {
                self.ping_acks += 1;
                if payload == MARKER.to_be_bytes() {
                    self.marker_acked = true;
                }
            }
            RST_STREAM if payload.len() == 4 => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                *self.resets.entry(code).or_default() += 1;
            }
            GOAWAY if payload.len() >= 8 => {
                self.goaway = Some(GoAway {
                    last_stream: u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
                    code: u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
                    debug: String::from_utf8_lossy(&payload[8..]).into_owned(),
                    at,
                });
            }
            HEADERS => {
                self.responses.entry(stream).or_insert(payload.first().copied().unwrap_or(0));
                if flags & END_STREAM != 0 {
                    self.ended.insert(stream);
                }
            }
            DATA if flags & END_STREAM != 0 => {
                self.ended.insert(stream);
            }
            _ => {}
        }
    }
}

async fn connect(addr: SocketAddr) -> (OwnedReadHalf, OwnedWriteHalf) {
    let s = TcpStream::connect(addr).await.expect("connect to the gateway");
    s.set_nodelay(true).expect("nodelay");
    s.into_split()
}

/// Read and parse everything the gateway sends until it closes the connection.
fn spawn_reader(mut r: OwnedReadHalf, t0: Instant) -> Arc<Mutex<Observed>> {
    let obs = Arc::new(Mutex::new(Observed::default()));
    let o = obs.clone();
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match r.read(&mut chunk).await {
                Ok(0) => {
                    o.lock().closed = Some((t0.elapsed(), "EOF".to_string()));
                    return;
                }
                Err(e) => {
                    o.lock().closed = Some((t0.elapsed(), format!("read error: {e}")));
                    return;
                }
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let at = t0.elapsed();
            let mut g = o.lock();
            g.bytes += n as u64;
            let mut off = 0;
            while buf.len() - off >= 9 {
                let h = &buf[off..off + 9];
                let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                if buf.len() - off < 9 + len {
                    break;
                }
                let (kind, flags) = (h[3], h[4]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                g.take_frame(kind, flags, stream, &buf[off + 9..off + 9 + len], at);
                off += 9 + len;
            }
            drop(g);
            buf.drain(..off);
        }
    });
    obs
}

/// Wait until `cond` holds (true) or `limit` elapses (false).
async fn wait_for(obs: &Mutex<Observed>, limit: Duration, cond: impl Fn(&Observed) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let ok = cond(&obs.lock());
        if ok {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Debug)]
enum WriteEnd {
    /// Everything was written.
    Done,
    /// The gateway closed the connection (reset, broken pipe).
    Failed(String),
    /// No progress for a whole stall limit (or past `PHASE`): the gateway stopped reading.
    Blocked,
}

impl std::fmt::Display for WriteEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteEnd::Done => f.write_str("all written"),
            WriteEnd::Failed(e) => write!(f, "write failed: {e}"),
            WriteEnd::Blocked => f.write_str("write blocked (the gateway stopped reading)"),
        }
    }
}

/// Write `buf`, counting what the socket took, until it is all written, a write fails, no
/// write makes progress for `stall`, or `PHASE` is over.
async fn write_counted(w: &mut OwnedWriteHalf, buf: &[u8], stall: Duration) -> (usize, WriteEnd) {
    let deadline = Instant::now() + PHASE;
    let mut off = 0;
    while off < buf.len() {
        let end = (off + 64 * 1024).min(buf.len());
        let limit = deadline.min(Instant::now() + stall);
        match tokio::time::timeout_at(limit, w.write(&buf[off..end])).await {
            Err(_) => return (off, WriteEnd::Blocked),
            Ok(Ok(0)) => return (off, WriteEnd::Failed("write returned 0".to_string())),
            Ok(Ok(n)) => off += n,
            Ok(Err(e)) => return (off, WriteEnd::Failed(e.to_string())),
        }
    }
    (off, WriteEnd::Done)
}

// ---------------------------------------------------------------------------------------
// Memory and service checks
// ---------------------------------------------------------------------------------------

/// This process's resident set size in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Samples VmRSS every few milliseconds on its own thread, keeping the peak.
struct RssWatch {
    base: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Debug, Clone, Copy)]
struct Rss {
    base: u64,
    peak: u64,
    after: u64,
}

impl RssWatch {
    fn start() -> RssWatch {
        let base = rss_kib();
        let peak = Arc::new(AtomicU64::new(base));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssWatch { base, peak, stop, thread }
    }

    fn finish(self) -> Rss {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("RSS sampler");
        let after = rss_kib();
        Rss { base: self.base, peak: self.peak.load(Ordering::Relaxed).max(after), after }
    }
}

impl Rss {
    fn growth(&self) -> u64 {
        self.peak.saturating_sub(self.base)
    }

    fn describe(&self) -> String {
        format!(
            "RSS base {:.1} MiB, peak {:.1} MiB (+{:.1} MiB), after {:.1} MiB",
            self.base as f64 / 1024.0,
            self.peak as f64 / 1024.0,
            self.growth() as f64 / 1024.0,
            self.after as f64 / 1024.0
        )
    }

    fn assert_bounded(&self, what: &str) {
        assert!(
            self.growth() < RSS_BOUND_KIB,
            "{what}: resident memory grew by {} KiB (bound {RSS_BOUND_KIB} KiB): {}",
            self.growth(),
            self.describe()
        );
    }
}

async fn setup() -> (TestUpstream, TestGateway) {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&simple_config(&[up.addr], "", "")).await;
    (up, gw)
}

/// A normal HTTP/2 client and a normal HTTP/1.1 client both get 200 from the upstream,
/// each within `PHASE`; how long that took.
async fn assert_served(gw: &TestGateway, what: &str) -> Duration {
    let t = Instant::now();
    for (name, c) in [("HTTP/2", h2_client()), ("HTTP/1.1", client())] {
        let url = gw.url("/served");
        let (status, version, body) = tokio::time::timeout(PHASE, async {
            let res = c.request(Request::get(&url).body(full("")).expect("request")).await.expect("response");
            let (status, version) = (res.status(), res.version());
            let body = res.into_body().collect().await.expect("body").to_bytes();
            (status, version, body)
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: a normal {name} client got no answer within {PHASE:?}"));
        assert_eq!(status, 200, "{what}: a normal {name} client: {body:?}");
        assert_eq!(&body[..], b"a", "{what}: a normal {name} client");
        let want = if name == "HTTP/2" { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
        assert_eq!(version, want, "{what}");
    }
    t.elapsed()
}

// ---------------------------------------------------------------------------------------
// 1. Rapid reset (CVE-2023-44487)
// ---------------------------------------------------------------------------------------

/// 10,000 requests each cancelled at once, written in one go without waiting: the gateway
/// must not do 10,000 requests' work. hyper leaves h2's limit of 20 remotely reset streams
/// not yet accepted, so the connection is told GOAWAY ENHANCE_YOUR_CALM and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_and_others_are_served() {
    const N: u32 = 10_000;
    let _serial = SERIAL.lock().await;
    let (up, gw) = setup().await;
    assert_served(&gw, "warm-up").await;
    let before = up.count();

    let block = request_block(false, "/");
    let mut batch = preface();
    for i in 0..N {
        let id = 1 + 2 * i;
        headers(&mut batch, id, END_STREAM | END_HEADERS, &block);
        rst_stream(&mut batch, id, CANCEL);
    }

    let rss = RssWatch::start();
    let t0 = Instant::now();
    let (r, mut w) = connect(gw.addr()).await;
    let obs = spawn_reader(r, t0);
    let (written, end) = write_counted(&mut w, &batch, PHASE).await;
    let write_took = t0.elapsed();
    let closed = wait_for(&obs, PHASE, |o| o.closed.is_some()).await;
    // Anything the gateway dispatched before the GOAWAY has reached the upstream by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = up.count() - before;
    let served_in = assert_served(&gw, "after a rapid reset").await;
    let rss = rss.finish();

    let o = obs.lock();
    eprintln!(
        "rapid reset: wrote {written} of {} bytes ({N} HEADERS+RST_STREAM pairs) in {write_took:?}: {end}\n  \
         gateway: {}\n  upstream hits: {hits}; normal clients served in {served_in:?}; {}",
        batch.len(),
        o.summary(),
        rss.describe()
    );
    assert!(closed, "the attacking connection is still open after {PHASE:?}: {}", o.summary());
    assert_eq!(
        o.goaway_code(),
        Some(ENHANCE_YOUR_CALM),
        "rapid reset should be answered with GOAWAY ENHANCE_YOUR_CALM: {}",
        o.summary()
    );
    let last = o.goaway.as_ref().map_or(0, |g| g.last_stream);
    assert!(last < 2 * 200, "the gateway took up to stream {last} before refusing: {}", o.summary());
    assert!(hits < 100, "the upstream saw {hits} of {N} reset requests");
    assert!(o.responses.len() < 100, "the gateway answered {} reset streams", o.responses.len());
    rss.assert_bounded("rapid reset");
}

/// Rapid reset paced so that the gateway has taken each stream before its reset arrives:
/// batches of 10 HEADERS, a 1 ms pause, their 10 RST_STREAMs, against an upstream that takes
/// 200 ms per request. h2's limit only counts streams reset before they were accepted, and
/// MAX_CONCURRENT_STREAMS only counts open streams, so nothing stops this: a well-behaved
/// client could have at most 128 requests in flight (640/s here), while this one starts
/// thousands a second at the upstream and never waits for an answer.
///
/// Without a defence the upstream saw ~4,000-4,800 of 5,000 requests in ~1.1-1.3 s. The
/// gateway counts the requests a client cancels before their answer and closes a connection
/// once more than 200 are and they are over half of its requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_rapid_reset_is_cut_off() {
    const N: u32 = 5_000;
    const BATCH: u32 = 10;
    let _serial = SERIAL.lock().await;
    let (up, gw) = setup().await;
    assert_served(&gw, "warm-up").await;
    up.delay_ms.store(200, Ordering::SeqCst);
    let before = up.count();

    let block = request_block(false, "/");
    let rss = RssWatch::start();
    let t0 = Instant::now();
    let (r, mut w) = connect(gw.addr()).await;
    let obs = spawn_reader(r, t0);
    let (_, mut end) = write_counted(&mut w, &preface(), PHASE).await;
    let mut sent = 0;
    while sent < N && matches!(end, WriteEnd::Done) && t0.elapsed() < PHASE {
        let (mut open, mut cancel) = (Vec::new(), Vec::new());
        for i in sent..(sent + BATCH).min(N) {
            headers(&mut open, 1 + 2 * i, END_STREAM | END_HEADERS, &block);
            rst_stream(&mut cancel, 1 + 2 * i, CANCEL);
        }
        end = write_counted(&mut w, &open, PHASE).await.1;
        tokio::time::sleep(Duration::from_millis(1)).await;
        if matches!(end, WriteEnd::Done) {
            end = write_counted(&mut w, &cancel, PHASE).await.1;
        }
        sent = (sent + BATCH).min(N);
    }
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = up.count() - before;
    up.delay_ms.store(0, Ordering::SeqCst);
    let served_in = assert_served(&gw, "after a paced rapid reset").await;
    let rss = rss.finish();
    let o = obs.lock();
    eprintln!(
        "paced rapid reset: {sent} of {N} streams opened and reset in {took:?} ({end})\n  gateway: {}\n  \
         upstream hits: {hits}; normal clients served in {served_in:?}; {}",
        o.summary(),
        rss.describe()
    );
    assert!(
        hits < 1_000,
        "one connection made the upstream start {hits} requests in {took:?} by cancelling each at once: {}",
        o.summary()
    );
    assert!(o.closed.is_some(), "the gateway closes the connection: {}", o.summary());
    rss.assert_bounded("paced rapid reset");
}

// ---------------------------------------------------------------------------------------
// 2. CONTINUATION flood (CVE-2024-27316)
// ---------------------------------------------------------------------------------------

/// A HEADERS frame without END_HEADERS followed by CONTINUATION frames that never end, up to
/// 50 MiB: 16 KiB frames of literal fields, and (separately) empty frames, which carry no
/// header bytes for a size limit to see. The gateway must close the connection long before
/// it has read it all, without buffering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off() {
    const TOTAL: usize = 50 << 20;
    let _serial = SERIAL.lock().await;
    let (up, gw) = setup().await;
    assert_served(&gw, "warm-up").await;

    let full_block = flood_block();
    for (name, block) in [("16 KiB CONTINUATION frames", &full_block[..]), ("empty CONTINUATION frames", &[][..])] {
        let mut start = preface();
        headers(&mut start, 1, END_STREAM, &request_block(false, "/flood"));
        // about 1 MiB of frames per write
        let mut chunk = Vec::with_capacity((1 << 20) + 9 + block.len());
        while chunk.len() < 1 << 20 {
            continuation(&mut chunk, 1, 0, block);
        }

        let before = up.count();
        let rss = RssWatch::start();
        let t0 = Instant::now();
        let (r, mut w) = connect(gw.addr()).await;
        let obs = spawn_reader(r, t0);
        let (mut written, mut end) = write_counted(&mut w, &start, PHASE).await;
        while written < TOTAL && matches!(end, WriteEnd::Done) && t0.elapsed() < PHASE {
            let (n, e) = write_counted(&mut w, &chunk, PHASE).await;
            written += n;
            end = e;
        }
        let write_took = t0.elapsed();
        let closed = wait_for(&obs, PHASE, |o| o.closed.is_some()).await;
        let hits = up.count() - before;
        let served_in = assert_served(&gw, &format!("after {name}")).await;
        let rss = rss.finish();

        let o = obs.lock();
        eprintln!(
            "CONTINUATION flood, {name}: wrote {written} of {TOTAL} bytes in {write_took:?} ({end})\n  \
             gateway: {}\n  upstream hits: {hits}; normal clients served in {served_in:?}; {}",
            o.summary(),
            rss.describe()
        );
        assert!(closed, "{name}: the attacking connection is still open after {PHASE:?}: {}", o.summary());
        assert!(
            matches!(o.goaway_code(), Some(ENHANCE_YOUR_CALM | 0x9 | 0x1)),
            "{name}: expected GOAWAY ENHANCE_YOUR_CALM (or COMPRESSION_ERROR / PROTOCOL_ERROR): {}",
            o.summary()
        );
        assert!(
            matches!(end, WriteEnd::Failed(_)) && written < TOTAL / 2,
            "{name}: the gateway took {written} of {TOTAL} bytes ({end}); it should have cut the flood off"
        );
        assert_eq!(hits, 0, "{name}: the endless header block reached the upstream");
        assert!(o.responses.is_empty(), "{name}: the endless header block was answered: {}", o.summary());
        rss.assert_bounded(&format!("CONTINUATION flood, {name}"));
    }
}

// ---------------------------------------------------------------------------------------
// 3. Control-frame floods: PING, SETTINGS, WINDOW_UPDATE
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Flood {
    Ping,
    Settings,
    WindowUpdate,
}

/// `n` control frames in one go, then a marker PING; with `read`, a reader task consumes
/// the replies, without it nothing is ever read (then `n` must be large enough to fill the
/// socket buffers both ways). The gateway's memory stays bounded and other clients are
/// served either way.
async fn control_flood(kind: Flood, n: u64, read: bool) {
    let _serial = SERIAL.lock().await;
    let (_up, gw) = setup().await;
    assert_served(&gw, "warm-up").await;
    let what = format!("{kind:?} flood ({n} frames, {})", if read { "replies read" } else { "replies never read" });

    let mut batch = preface();
    for i in 0..n {
        match kind {
            Flood::Ping => ping(&mut batch, i),
            // ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 65535 (the defaults: each needs an ACK)
            Flood::Settings => settings(&mut batch, &[(0x2, 0), (0x4, 65_535)]),
            // the connection window grows by 1 each time (2^31-1 is far away)
            Flood::WindowUpdate => window_update(&mut batch, 0, 1),
        }
    }
    ping(&mut batch, MARKER);

    let rss = RssWatch::start();
    let t0 = Instant::now();
    let (r, mut w) = connect(gw.addr()).await;
    let (obs, unread) = if read { (Some(spawn_reader(r, t0)), None) } else { (None, Some(r)) };
    let (written, end) = write_counted(&mut w, &batch, BLOCKED).await;
    let write_took = t0.elapsed();
    // With the replies read: the gateway works through the flood (or closes the connection).
    let finished = match &obs {
        Some(o) => wait_for(o, PHASE, |o| o.marker_acked || o.closed.is_some()).await,
        None => false,
    };
    let drained_in = t0.elapsed();
    // Others are served while the attacking connection is still there (possibly stuck).
    let served_in = assert_served(&gw, &what).await;
    let rss = rss.finish();

    let outcome = match (obs, unread) {
        (Some(o), _) => o.lock().summary(),
        (None, Some(mut r)) => {
            // Only now read what is waiting, to see whether the gateway closed the connection.
            let mut got = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            let closed = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) => return "EOF".to_string(),
                        Err(e) => return format!("read error: {e}"),
                        Ok(k) => got += k,
                    }
                }
            })
            .await;
            match closed {
                Ok(how) => format!("closed by the gateway ({how}); {got} bytes were waiting"),
                Err(_) => format!("still open; {got} bytes read in the 1 s afterwards"),
            }
        }
        (None, None) => unreachable!("one of the halves is kept"),
    };
    eprintln!(
        "{what}: wrote {written} of {} bytes in {write_took:?}: {end}\n  gateway: {outcome} \
         (waited {drained_in:?})\n  normal clients served in {served_in:?}; {}",
        batch.len(),
        rss.describe()
    );
    if read {
        assert!(
            finished,
            "{what}: neither the marker PING was answered nor the connection closed within {PHASE:?}: {outcome}"
        );
        assert!(!matches!(end, WriteEnd::Blocked), "{what}: {end} although the replies were read");
    } else {
        // Never reading: once the socket buffers are full, the gateway must stop reading
        // (backpressure) or close; it may not keep absorbing the flood into memory.
        assert!(!matches!(end, WriteEnd::Done), "{what}: the gateway took all {written} bytes");
    }
    rss.assert_bounded(&what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_with_replies_read() {
    control_flood(Flood::Ping, 100_000, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_without_reading() {
    control_flood(Flood::Ping, 1_000_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_with_replies_read() {
    control_flood(Flood::Settings, 100_000, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_without_reading() {
    control_flood(Flood::Settings, 1_000_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_update_flood_is_absorbed() {
    control_flood(Flood::WindowUpdate, 100_000, true).await;
}

// ---------------------------------------------------------------------------------------
// 4. Too many concurrent streams
// ---------------------------------------------------------------------------------------

/// 1,000 requests whose bodies never end, on one connection: 128 are taken (and held
/// open), the rest refused with REFUSED_STREAM; the held ones still complete. A second
/// connection that keeps opening streams past the refusals is told to go away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_are_capped() {
    const N: u32 = 1_000;
    const MAX: u32 = 128;
    let _serial = SERIAL.lock().await;
    let (up, gw) = setup().await;
    assert_served(&gw, "warm-up").await;
    let before = up.count();

    let block = request_block(true, "/echo");
    let mut batch = preface();
    for i in 0..N {
        headers(&mut batch, 1 + 2 * i, END_HEADERS, &block);
    }

    let rss = RssWatch::start();
    let t0 = Instant::now();
    let (r, mut w) = connect(gw.addr()).await;
    let obs = spawn_reader(r, t0);
    let (_, end) = write_counted(&mut w, &batch, PHASE).await;
    assert!(matches!(end, WriteEnd::Done), "{end}");
    let settled = wait_for(&obs, PHASE, |o| {
        o.reset_count(REFUSED_STREAM) + o.responses.len() as u64 >= u64::from(N) || o.closed.is_some()
    })
    .await;
    let (refused, accepted) = {
        let o = obs.lock();
        let accepted: Vec<u32> = o.responses.keys().copied().collect();
        (o.reset_count(REFUSED_STREAM), accepted)
    };
    let hits = up.count() - before;
    // The held streams do not starve others.
    let served_in = assert_served(&gw, "while 128 streams are held open").await;

    // Finish the accepted requests: each echoes its one byte and ends.
    let mut finish = Vec::new();
    for id in &accepted {
        data(&mut finish, *id, END_STREAM, b"x");
    }
    let (_, end) = write_counted(&mut w, &finish, PHASE).await;
    assert!(matches!(end, WriteEnd::Done), "{end}");
    let all_ended = wait_for(&obs, PHASE, |o| accepted.iter().all(|id| o.ended.contains(id))).await;

    let summary = {
        let o = obs.lock();
        let ok = accepted.iter().filter(|id| o.responses.get(id) == Some(&0x88)).count();
        assert_eq!(ok, accepted.len(), "every held stream should be answered 200: {}", o.summary());
        assert!(o.goaway.is_none() && o.closed.is_none(), "{}", o.summary());
        o.summary()
    };
    eprintln!(
        "{N} concurrent streams: {refused} refused, {} accepted, upstream hits {hits}; all held \
         streams completed: {all_ended}; normal clients served in {served_in:?}\n  gateway: {summary}",
        accepted.len()
    );
    assert!(settled, "not every stream was answered or refused within {PHASE:?}: {summary}");
    assert_eq!(accepted.len() as u32, MAX, "{summary}");
    assert_eq!(refused, u64::from(N - MAX), "{summary}");
    assert!(hits <= MAX as usize, "the upstream saw {hits} requests, more than {MAX}");
    assert!(all_ended, "the held streams did not complete: {summary}");
    drop(w);

    // Refusing is counted: past hyper's 1,024 locally reset streams the connection is closed.
    let mut batch = preface();
    for i in 0..3 * N {
        headers(&mut batch, 1 + 2 * i, END_HEADERS, &block);
    }
    let t0 = Instant::now();
    let (r, mut w) = connect(gw.addr()).await;
    let obs = spawn_reader(r, t0);
    let (written, end) = write_counted(&mut w, &batch, PHASE).await;
    let closed = wait_for(&obs, PHASE, |o| o.closed.is_some()).await;
    let served_in = assert_served(&gw, "after a stream-refusal flood").await;
    let rss = rss.finish();
    let o = obs.lock();
    eprintln!(
        "{} concurrent streams: wrote {written} of {} bytes: {end}\n  gateway: {}\n  normal clients \
         served in {served_in:?}; {}",
        3 * N,
        batch.len(),
        o.summary(),
        rss.describe()
    );
    assert!(closed, "{}", o.summary());
    assert_eq!(o.goaway_code(), Some(ENHANCE_YOUR_CALM), "{}", o.summary());
    assert!(o.reset_count(REFUSED_STREAM) <= 1024, "{}", o.summary());
    rss.assert_bounded("concurrent streams");
}

// ---------------------------------------------------------------------------------------
// 6. Slow readers (CVE-2019-9511 / CVE-2019-9517 shapes)
// ---------------------------------------------------------------------------------------

/// A client that answers nothing but takes no response data (it grants no flow-control
/// window, or stops granting it once the first 64 KiB are in) holds a stream, and the
/// upstream connection behind it, for as long as it likes unless the gateway cuts it: a
/// response that waited for the client over a whole `idle_timeout` closes the connection,
/// as HTTP/1's write-stall cut does. A response the *upstream* pauses is not the client's
/// fault and must go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_are_cut_off_and_slow_upstreams_are_not() {
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    let _serial = SERIAL.lock().await;
    let up = TestUpstream::start("a").await;
    let yaml = simple_config(&[up.addr], "idle_timeout: 300ms", "")
        .replace("listeners:", "admin: { bind: \"127.0.0.1:0\", public_metrics: true }\nlisteners:");
    let gw = TestGateway::start(&yaml).await;
    let metrics = format!("http://{}/metrics", gw.gw.admin_addr().expect("admin"));
    let stalled = async || {
        let (_, _, text) = get(&metrics).await;
        metric_sum(&text, "portcullis_h2_stalled_connections_closed_total", &[])
    };

    // A response paused by the upstream for 5 × idle_timeout: delivered whole.
    let mut hello = preface();
    headers(&mut hello, 1, END_HEADERS | END_STREAM, &request_block(false, "/stall/1500"));
    let t0 = Instant::now();
    let (r, mut w) = connect(gw.addr()).await;
    let obs = spawn_reader(r, t0);
    w.write_all(&hello).await.expect("write");
    let ended = wait_for(&obs, PHASE, |o| o.ended.contains(&1) || o.closed.is_some()).await;
    {
        let o = obs.lock();
        assert!(ended && o.ended.contains(&1) && o.closed.is_none(), "a paused upstream body was cut: {}", o.summary());
        assert_eq!(o.responses.get(&1), Some(&0x88), "{}", o.summary());
    }
    drop(w);
    assert_eq!(stalled().await, 0.0);

    // No window at all, and a window used up after 64 KiB of a 1 MiB body.
    let shapes: [(&str, &[(u16, u32)]); 2] =
        [("zero initial window", &[(INITIAL_WINDOW_SIZE, 0)]), ("window never updated", &[])];
    for (n, (name, params)) in shapes.into_iter().enumerate() {
        let mut hello = PREFACE.to_vec();
        settings(&mut hello, params);
        headers(&mut hello, 1, END_HEADERS | END_STREAM, &request_block(false, "/big/1"));
        let t0 = Instant::now();
        let (r, mut w) = connect(gw.addr()).await;
        let obs = spawn_reader(r, t0);
        w.write_all(&hello).await.expect("write");
        let closed = wait_for(&obs, PHASE, |o| o.closed.is_some()).await;
        {
            let o = obs.lock();
            eprintln!("slow reader, {name}: {}", o.summary());
            assert!(closed, "{name}: a client taking no data kept its stream: {}", o.summary());
            assert_eq!(o.responses.get(&1), Some(&0x88), "{name}: {}", o.summary());
            assert!(!o.ended.contains(&1), "{name}: {}", o.summary());
            let at = o.closed.as_ref().map(|c| c.0).unwrap_or_default();
            assert!(at >= Duration::from_millis(300), "{name}: closed before idle_timeout: {at:?}");
        }
        drop(w);
        assert_eq!(stalled().await, (n + 1) as f64, "{name}");
    }
    assert_served(&gw, "after slow readers").await;
}
