#!/usr/bin/env python3
"""HTTP/2 conformance (h2spec's cases) and flood defences, from a raw-frame client.

    python3 data-plane/tests/h2_conformance.py --addr 127.0.0.1:8080 [--tls] [--authority HOST]
        [--path /] [--timeout 2] [--only ID] [-v]

The RFC 9113 / RFC 7541 cases reproduce h2spec (github.com/summerwind/h2spec, master af83a65 of
June 2022) one for one, with its ids (<suite>/<section>/<n>, n counting from 1 in h2spec's order),
its frames (byte for byte where h2spec writes raw bytes) and its verdicts (spec/verifier.go):
  generic/1, 2, 3.1-3.5, 3.7-3.10, 4, 5                                           44 cases
  http2/3.5, 4.1-4.3, 5.1, 5.1.1, 5.1.2, 5.3.1, 5.4.1, 5.5, 6.1-6.5, 6.5.2, 6.5.3, 6.7, 6.8,
        6.9, 6.9.1, 6.9.2, 6.10, 7, 8.1, 8.1.2, 8.1.2.1-8.1.2.3, 8.1.2.6, 8.2           95 cases
  hpack/2.3.3, 4.2, 5.2, 6.1, 6.3                                                  8 cases
Nothing of h2spec's server suites is left out (its client/* suite tests clients). h2spec has no
case directly under hpack/2.3 or hpack/4: "index out of range" is hpack/2.3.3/1-2, a table size
update above SETTINGS_HEADER_TABLE_SIZE is hpack/6.3/1 (hpack/4.2/1: an update ending a block).
http2/5.4.1/2 is an h2spec --strict case (GOAWAY before closing is a SHOULD); it runs here anyway.

Verdicts, as h2spec's:
  connection error X  GOAWAY with code X, or the connection closed (EOF or reset)
  stream error X      RST_STREAM or GOAWAY with code X, or the connection closed
  response            HEADERS on the request's stream (here it must carry :status)
  PING / SETTINGS     the first one received is an ACK (with the same opaque data, for PING)
A GOAWAY / RST_STREAM with an unexpected code followed by a close passes, as in h2spec (which reads
on after it), with a remark naming the code; --strict-codes fails it instead. Stricter than
h2spec: bytes that are no HTTP/2 frame fail. http2/3.5/2 on a plain (not --tls) listener that
also serves HTTP/1.1: an HTTP/1.1 400 answer passes too (the bytes are no preface, so they are
HTTP/1.1's to judge). h2spec skips http2/5.1.2/1 without SETTINGS_MAX_CONCURRENT_STREAMS (here
also above 1000), and 6.5.3/1, 6.9.1/1, 6.9.2/1-2 when GET --path has no response body: those
print "skip" and count neither way. Frames a case sends before it next reads go out in one write
(h2spec writes each on its own): a fast server can't answer a request before it has read the rest.

flood/* cases are not h2spec's. continuation: GOAWAY or close before all 2,000 CONTINUATION
frames of 16 KiB went in; rapid-reset (CVE-2023-44487): GOAWAY(ENHANCE_YOUR_CALM) naming a last
stream below the 2,000th, or close; settings, ping, empty-data: 10,000 frames sent unread, then a
GOAWAY, a close or a PING answered on that connection; hpack-bomb: 431, RST_STREAM or GOAWAY, no
other answer. After each, a fresh connection must get 200/404 for GET --path. Whether the server's
memory stayed bounded can't be seen from here: watch its RSS while they run.

Each case has its own connection(s) and --timeout seconds (2 like h2spec, 3 at most) for its
reactions; a flood has 3 s to send, then --timeout to react and --timeout for the survival check.
"""
import argparse
import socket
import ssl
import struct
import sys
import time

import hpack
from hyperframe import frame as hf

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TYPES = ["DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING", "GOAWAY",
         "WINDOW_UPDATE", "CONTINUATION"]
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
ERRORS = ["NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
          "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
          "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"]
(NO_ERROR, PROTOCOL_ERROR, _, FLOW_CONTROL_ERROR, _, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM,
 CANCEL, COMPRESSION_ERROR, _, ENHANCE_YOUR_CALM, _, _) = range(14)
(HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE,
 MAX_HEADER_LIST_SIZE) = range(1, 7)
DEFAULT_WINDOW, MAX_FRAME, MAX_WINDOW = 65535, 16384, 2**31 - 1
CLOSED, TIMEOUT = "connection closed", "timeout"  # read() events besides frames (other strings: junk)
TOTAL = 89  # seconds: no case starts unless the longest (a flood: 3 s + 2 timeouts) would end by then
H2SPEC_PING = b"h2spec\0\0"
Fail, Skip = type("Fail", (Exception,), {}), type("Skip", (Exception,), {})
STRICT_CODES = False  # --strict-codes
REMARKS = []  # the current case's h2spec-passing deviations, printed after its "ok" line


def err_name(code):
    return ERRORS[code] if code < len(ERRORS) else f"{code:#x}"


def frame_bytes(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, sid) + payload


def hpack_int(value, bits, first=0):
    """RFC 7541 §5.1 integer on a `bits`-bit prefix; `first` carries the representation's top bits."""
    top = (1 << bits) - 1
    if value < top:
        return bytes([first | value])
    out, value = [first | top], value - top
    while value >= 128:
        out.append(0x80 | value & 0x7F)
        value >>= 7
    return bytes(out + [value])


def literal(name, value, index=False):
    """A literal header field with a new name, no Huffman (§6.2.1 with `index`, else §6.2.2)."""
    n, v = name.encode(), value.encode()
    return (b"\x40" if index else b"\x00") + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v


def dummy(n):
    """h2spec's DummyHeaders, with its default --max-header-length of 4000."""
    return [(f"x-dummy{i}", "x" * 4000) for i in range(n)]


class Frame:
    def __init__(self, ftype, flags, sid, payload):
        self.type, self.flags, self.sid, self.payload = ftype, flags, sid, payload
        self.headers = None  # decoded header block, for HEADERS / PUSH_PROMISE

    @property
    def code(self):  # of RST_STREAM / GOAWAY
        off = 4 if self.type == GOAWAY else 0
        return int.from_bytes(self.payload[off:off + 4], "big")

    @property
    def last_sid(self):
        return int.from_bytes(self.payload[:4], "big") & 0x7FFFFFFF

    @property
    def status(self):
        return dict(self.headers or []).get(":status")

    def __str__(self):
        t, info = self.type, [f"stream {self.sid}"] if self.sid else []
        if t == GOAWAY:
            info += [f"last stream {self.last_sid}", err_name(self.code)]
            info += [repr(self.payload[8:80])] * (len(self.payload) > 8)  # debug data
        elif t == RST_STREAM:
            info.append(err_name(self.code))
        elif t == HEADERS:
            info.append(f":status {self.status}")
        elif t == DATA:
            info.append(f"{len(self.payload)} octets")
        elif t == WINDOW_UPDATE:
            info.append(f"+{self.code}")
        info += ["ACK"] * (t in (SETTINGS, PING) and bool(self.flags & ACK))
        info += ["END_STREAM"] * (t in (DATA, HEADERS) and bool(self.flags & END_STREAM))
        return f"{TYPES[t] if t < len(TYPES) else f'frame type {t:#x}'}({', '.join(info)})"


class Conn:
    """A client connection: frames to send, events read by a deadline (Frame, CLOSED, TIMEOUT)."""

    def __init__(self, x):
        self.x, self.deadline = x, x.deadline
        self.sock = x.dial()
        x.conns.append(self)
        self.buf, self.out, self.partial, self.closed = bytearray(), bytearray(), None, False
        self.enc, self.dec = hpack.Encoder(), hpack.Decoder()
        self.dec.max_header_list_size = 1 << 24
        self.settings, self.window, self.auto_window = {}, {0: DEFAULT_WINDOW}, True
        self.last_block, self.seen = b"", []  # seen: the events read, for failure messages

    def send(self, data):
        self.out += data  # written by the next read(): what a case sends at once goes in one write

    def flush(self):
        if not self.out:
            return
        data, self.out = bytes(self.out), bytearray()
        try:
            self.sock.settimeout(max(0.05, self.deadline - time.monotonic()))
            self.sock.sendall(data)
        except OSError:
            pass  # the server may have closed: what it sent before says why

    def raw(self, ftype, flags, sid, payload=b""):
        self.send(frame_bytes(ftype, flags, sid, payload))

    def put(self, f, sid):
        """Sends a hyperframe frame as stream `sid` (hyperframe refuses ids invalid for the type)."""
        data = f.serialize()
        self.send(data[:5] + struct.pack(">I", sid) + data[9:])

    def headers(self, sid, headers=None, end_stream=True, end_headers=True, block=None, pad=0, dep=None,
                weight=255, exclusive=False):
        self.last_block = self.enc.encode(headers) if block is None else block
        flags = ["END_STREAM"] * end_stream + ["END_HEADERS"] * end_headers + ["PADDED"] * bool(pad)
        flags += ["PRIORITY"] * (dep is not None)
        self.put(hf.HeadersFrame(1, self.last_block, flags=flags, pad_length=pad, depends_on=dep or 0,
                                 stream_weight=weight, exclusive=exclusive), sid)

    def request(self, sid=1, method="GET", extra=(), before=(), **kw):
        """h2spec's CommonHeaders (with `before` and `extra` fields) on stream `sid`."""
        self.headers(sid, list(before) + self.x.common(method) + list(extra), **kw)

    def post(self, extra=(), **kw):
        self.request(method="POST", extra=extra, end_stream=False, **kw)

    def data(self, sid, payload, end_stream=True, pad=0):
        flags = ["END_STREAM"] * end_stream + ["PADDED"] * bool(pad)
        self.put(hf.DataFrame(1, payload, flags=flags, pad_length=pad), sid)

    def cont(self, sid, block=None, end_headers=True):
        """CONTINUATION (by default with h2spec's DummyHeaders(1))."""
        block = self.enc.encode(dummy(1)) if block is None else block
        self.put(hf.ContinuationFrame(1, block, flags=["END_HEADERS"] * end_headers), sid)

    def priority(self, sid, dep=0, weight=255, exclusive=False):
        self.put(hf.PriorityFrame(1, depends_on=dep, stream_weight=weight, exclusive=exclusive), sid)

    def rst(self, sid, code=CANCEL):
        self.put(hf.RstStreamFrame(1, error_code=code), sid)

    def settings_frame(self, *pairs, ack=False):  # raw: hyperframe keeps settings in a dict, no repeats
        self.raw(SETTINGS, ACK if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))

    def ping(self, data=bytes(8), ack=False):
        self.put(hf.PingFrame(0, data, flags=["ACK"] * ack), 0)

    def goaway(self, code, debug=b""):
        self.put(hf.GoAwayFrame(0, last_stream_id=0, error_code=code, additional_data=debug), 0)

    def window_update(self, sid, incr):
        self.put(hf.WindowUpdateFrame(1, incr), sid)

    def handshake(self):
        """Preface and SETTINGS; done once the server's SETTINGS is ACKed and it ACKed ours."""
        self.send(PREFACE)
        self.settings_frame((INITIAL_WINDOW_SIZE, DEFAULT_WINDOW))
        local = remote = False
        while not (local and remote):
            ev = self.read()
            if not isinstance(ev, Frame):
                raise Fail(f"handshake: {', '.join(self.seen)}")
            if ev.type == SETTINGS and ev.flags & ACK:
                local = True
            elif ev.type == SETTINGS:
                remote = True
                pairs = range(0, len(ev.payload) - 5, 6)
                self.settings.update(struct.unpack(">HI", ev.payload[i:i + 6]) for i in pairs)
                self.settings_frame(ack=True)
        self.seen = []
        return self

    def read(self, until=None):
        """The next event by `until` (default: the case's deadline): a Frame, CLOSED, TIMEOUT, or a
        string describing bytes that are no HTTP/2 frame."""
        self.flush()
        until = until or self.deadline
        while True:
            ev = self._next()
            if ev is None and self.closed:
                ev = CLOSED
            if ev is None and time.monotonic() >= until:
                ev = TIMEOUT
            if ev is not None:
                if ev != TIMEOUT or until == self.deadline:
                    self.seen.append(str(ev))
                if self.x.verbose and ev != TIMEOUT:
                    print(f"     recv {ev}", file=sys.stderr)
                return ev
            try:
                self.sock.settimeout(max(0.001, until - time.monotonic()))
                chunk = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            except OSError:
                chunk = b""
            self.closed = not chunk
            self.buf += chunk

    def _next(self):
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if length > MAX_FRAME:  # this client never allows more
                junk, self.closed = bytes(self.buf[:40]), True
                self.buf.clear()
                return f"a {length}-octet frame (not HTTP/2?): {junk!r}"
            if len(self.buf) < 9 + length:
                return None
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            f = Frame(self.buf[3], self.buf[4], sid, bytes(self.buf[9:9 + length]))
            del self.buf[:9 + length]
            if f.type in (HEADERS, PUSH_PROMISE) or (f.type == CONTINUATION and self.partial):
                f = self._block(f)
            if f and f.type == DATA:
                self._credit(len(f.payload), f.sid)
            if f:
                return f
        return None

    def _block(self, f):
        """Gathers a header block's frames into the first one, decoded."""
        if f.type != CONTINUATION:
            p, pad = f.payload, 0
            if f.flags & PADDED:
                pad, p = p[0], p[1:]
            p = p[5:] if f.type == HEADERS and f.flags & PRIORITY_FLAG else p[4:] if f.type == PUSH_PROMISE else p
            self.partial = [f, p[:len(p) - pad]]
        else:
            self.partial[1] += f.payload
        if not f.flags & END_HEADERS:
            return None
        (first, block), self.partial = self.partial, None
        try:
            first.headers = self.dec.decode(block)
        except Exception as e:  # noqa: BLE001 - shown as the frame's content
            first.headers = [("hpack-error", repr(e))]
        return first

    def _credit(self, n, sid):
        """h2spec's window upkeep: WINDOW_UPDATE back to 65535 once a window is used up."""
        if not self.auto_window or not n:
            return
        for s in (sid, 0):
            w = self.window.get(s, DEFAULT_WINDOW) - n
            if w <= 0:
                self.window_update(s, DEFAULT_WINDOW - w)
                w = DEFAULT_WINDOW
            self.window[s] = w


class Ctx:
    def __init__(self, args):
        host, _, port = args.addr.rpartition(":")
        self.host, self.port, self.tls = host.strip("[]"), int(port), args.tls
        self.scheme = "https" if args.tls else "http"
        default = self.port == (443 if args.tls else 80)
        self.authority = args.authority or (host if default else args.addr)  # as h2spec sends it
        self.sni = self.authority.rsplit(":", 1)[0] if "]" not in self.authority else None
        self.path, self.timeout, self.verbose = args.path, min(args.timeout, 3.0), args.verbose
        self.deadline, self.conns = 0.0, []

    def dial(self):
        sock = socket.create_connection((self.host, self.port), timeout=max(0.1, self.deadline - time.monotonic()))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            tc = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            tc.check_hostname, tc.verify_mode = False, ssl.CERT_NONE  # self-signed certificates
            tc.set_alpn_protocols(["h2"])
            sock = tc.wrap_socket(sock, server_hostname=self.sni)
            if sock.selected_alpn_protocol() != "h2":
                raise Fail(f"ALPN: the server chose {sock.selected_alpn_protocol()!r}, not h2")
        return sock

    def conn(self):
        return Conn(self).handshake()

    def common(self, method="GET"):
        return [(":method", method), (":scheme", self.scheme), (":path", self.path), (":authority", self.authority)]

    def note(self, msg):
        if self.verbose:
            print(f"     note {msg}", file=sys.stderr)

    def close_all(self):
        for c in self.conns:
            c.sock.close()
        self.conns = []


# --- verdicts (h2spec's spec/verifier.go) ------------------------------------------------------
def fail(c, expected, note=""):
    shown, more = c.seen[-6:], f"{len(c.seen) - 6} events, then " if len(c.seen) > 6 else ""
    raise Fail(f"expected {expected}; got {more}{', '.join(shown) or 'nothing'}{note}")


def wait_for(c, pred, until=None):
    """Reads until a frame satisfying pred, or an event that is no frame; returns that event."""
    while True:
        ev = c.read(until)
        if not isinstance(ev, Frame) or pred(ev):
            return ev


def error_reaction(c, codes, types):
    expected = f"{' or '.join(TYPES[t] for t in types)} ({'/'.join(map(err_name, codes))}) or close"
    ev = wait_for(c, lambda f: f.type in types)
    if ev == CLOSED or isinstance(ev, Frame) and ev.code in codes:
        return
    if isinstance(ev, Frame):  # h2spec reads on, and passes if the connection then closes
        seen = c.seen[:]
        closed = wait_for(c, lambda f: False) == CLOSED
        c.seen = seen
        if closed and not STRICT_CODES:
            REMARKS.append(f"{TYPES[ev.type]} {err_name(ev.code)} then close, where {expected.split(' or close')[0]}")
            return
        fail(c, expected, " (then the connection closed: h2spec passes this)" if closed else "")
    fail(c, expected)


def conn_error(c, *codes):
    error_reaction(c, codes, (GOAWAY,))


def stream_error(c, *codes):
    error_reaction(c, codes, (RST_STREAM, GOAWAY))


def response(c, sid=1):
    ev = wait_for(c, lambda f: f.sid == sid and f.type in (HEADERS, RST_STREAM) or f.type == GOAWAY and f.code)
    if not (isinstance(ev, Frame) and ev.type == HEADERS and ev.status):
        fail(c, f"HEADERS with :status on stream {sid}")
    return ev


def ping_ack(c, data=bytes(8), or_close=False):
    want = lambda f: f.type == PING and f.flags & ACK and f.payload == data  # noqa: E731
    ev = wait_for(c, want if or_close else lambda f: f.type == PING)
    if not (ev == CLOSED and or_close or isinstance(ev, Frame) and want(ev)):
        fail(c, f"PING(ACK, {data!r})" + " or close" * or_close)


def first(c, ftype, check=lambda f: True, expected=None):
    ev = wait_for(c, lambda f: f.type == ftype)
    if not (isinstance(ev, Frame) and check(ev)):
        fail(c, expected or TYPES[ftype])
    return ev


def settings_ack(c):
    first(c, SETTINGS, lambda f: f.flags & ACK, "SETTINGS(ACK)")


def stream_closed(c):
    ev = wait_for(c, lambda f: f.type in (DATA, HEADERS) and f.flags & END_STREAM
                  or f.type == RST_STREAM and f.code == NO_ERROR)
    if not isinstance(ev, Frame):
        fail(c, "the stream closed (END_STREAM or RST_STREAM(NO_ERROR))")


def closes(c):
    if wait_for(c, lambda f: False) != CLOSED:
        fail(c, "the connection closed")


def CONN(*codes):
    return lambda c: conn_error(c, *codes)


def STREAM(*codes):
    return lambda c: stream_error(c, *codes)


def PING_ACK(data=bytes(8), or_close=False):
    return lambda c: ping_ack(c, data, or_close)


# --- the table of cases: (id, description, function of a Ctx raising Fail or Skip) ---------------
CASES = []


def case(cid, desc):
    def register(fn):
        CASES.append((cid, desc, fn))
        return fn
    return register


def simple(cid, desc, send, check):
    """The usual shape: handshake, send(conn), check(conn) the server's reaction."""
    case(cid, desc)(lambda x: (lambda c: (send(c), check(c)))(x.conn()))


def RAW(*chunks):
    return lambda c: c.send(b"".join(chunks))


def preface(x):
    c = Conn(x)
    c.send(PREFACE)
    c.settings_frame((INITIAL_WINDOW_SIZE, DEFAULT_WINDOW))
    ev = c.read()
    if not (isinstance(ev, Frame) and ev.type == SETTINGS and not ev.flags & ACK):
        fail(c, "SETTINGS (not ACK) as the server's first frame")


def body_length(x):
    """h2spec's ServerDataLength: octets of DATA in the response to GET --path."""
    c, n = x.conn(), 0
    c.request()
    while True:
        ev = wait_for(c, lambda f: f.sid == 1)
        if not isinstance(ev, Frame) or ev.type == RST_STREAM:
            raise Fail(f"unable to get the length of the response to GET {x.path}: {ev}")
        n += len(ev.payload) if ev.type == DATA else 0
        if ev.flags & END_STREAM:
            return n


def flow_case(cid, desc, body, windows, then=lambda c: None):
    """h2spec's flow-control cases: SETTINGS_INITIAL_WINDOW_SIZE `windows`, GET, `then`; the next
    DATA must be 1 octet long. Skipped (as by h2spec) when the response has under `body` octets."""
    def run(x):
        if body_length(x) < body:
            raise Skip(f"the response to GET {x.path} has fewer than {body} body octets (h2spec skips)")
        c = x.conn()
        c.settings_frame(*[(INITIAL_WINDOW_SIZE, w) for w in windows])
        settings_ack(c)
        c.request()
        then(c)
        first(c, DATA, lambda f: len(f.payload) == 1, "DATA(stream 1, 1 octets)")
    case(cid, desc)(run)


# generic: the server must accept well-formed frames ---------------------------------------------
case("generic/1/1", "Sends a client connection preface")(preface)
simple("generic/2/1", "Sends a PRIORITY frame on idle stream", lambda c: (c.priority(1), c.ping()), PING_ACK())
simple("generic/2/2", "Sends a WINDOW_UPDATE frame on half-closed (remote) stream",
       lambda c: (c.settings_frame((INITIAL_WINDOW_SIZE, 0)), c.request(), c.window_update(1, 1)),
       lambda c: first(c, DATA))
simple("generic/2/3", "Sends a PRIORITY frame on half-closed (remote) stream",
       lambda c: (c.settings_frame((INITIAL_WINDOW_SIZE, 0)), c.request(), c.priority(1), c.window_update(1, 1)),
       lambda c: first(c, DATA))
simple("generic/2/4", "Sends a RST_STREAM frame on half-closed (remote) stream",
       lambda c: (c.request(), c.rst(1), c.ping()), PING_ACK(or_close=True))
simple("generic/2/5", "Sends a PRIORITY frame on closed stream",
       lambda c: (c.request(), stream_closed(c), c.priority(1), c.ping()), PING_ACK())
simple("generic/3.1/1", "Sends a DATA frame", lambda c: (c.post(), c.data(1, b"test")), response)
simple("generic/3.1/2", "Sends multiple DATA frames",
       lambda c: (c.post(), c.data(1, b"test", False), c.data(1, b"test")), response)
simple("generic/3.1/3", "Sends a DATA frame with padding", lambda c: (c.post(), c.data(1, b"test", pad=5)), response)
simple("generic/3.2/1", "Sends a HEADERS frame", lambda c: c.request(), response)
simple("generic/3.2/2", "Sends a HEADERS frame with padding", lambda c: c.request(pad=8), response)
simple("generic/3.2/3", "Sends a HEADERS frame with priority", lambda c: c.request(dep=0), response)
for n, (desc, prio) in enumerate([
        ("Sends a PRIORITY frame with priority 1", (1, 0, 0, False)),
        ("Sends a PRIORITY frame with priority 256", (1, 0, 255, False)),
        ("Sends a PRIORITY frame with stream dependency", (3, 1, 0, False)),
        ("Sends a PRIORITY frame with exclusive", (1, 0, 0, True)),
        ("Sends a PRIORITY frame for an idle stream, then send a HEADER frame for a lower stream ID",
         (3, 0, 255, False))], 1):
    simple(f"generic/3.3/{n}", desc, lambda c, prio=prio: (c.priority(*prio), c.request()), response)
simple("generic/3.4/1", "Sends a RST_STREAM frame",
       lambda c: (c.request(end_stream=False), c.rst(1), c.ping()), PING_ACK(or_close=True))
simple("generic/3.5/1", "Sends a SETTINGS frame", lambda c: c.settings_frame(
    (HEADER_TABLE_SIZE, 4096), (ENABLE_PUSH, 1), (MAX_CONCURRENT_STREAMS, 100), (INITIAL_WINDOW_SIZE, 65535),
    (MAX_FRAME_SIZE, 16384), (MAX_HEADER_LIST_SIZE, 100)), settings_ack)
simple("generic/3.7/1", "Sends a PING frame", lambda c: c.ping(H2SPEC_PING), PING_ACK(H2SPEC_PING))
simple("generic/3.8/1", "Sends a GOAWAY frame", lambda c: (c.goaway(NO_ERROR, b"h2spec"), c.ping(H2SPEC_PING)),
       PING_ACK(H2SPEC_PING, or_close=True))
simple("generic/3.9/1", "Sends a WINDOW_UPDATE frame with stream ID 0",
       lambda c: (c.window_update(0, 1), c.ping()), PING_ACK())
simple("generic/3.9/2", "Sends a WINDOW_UPDATE frame with stream ID 1",
       lambda c: (c.request(), c.window_update(1, 1)), response)


def split_block(c, cuts):
    """GET's header block cut at `cuts`: HEADERS, then CONTINUATION frames."""
    block = c.enc.encode(c.x.common())
    parts = [block[a:b] for a, b in zip((0,) + cuts, cuts + (None,))]
    c.headers(1, block=parts[0], end_headers=False)
    for i, part in enumerate(parts[1:], 2):
        c.cont(1, part, end_headers=i == len(parts))


simple("generic/3.10/1", "Sends a CONTINUATION frame", lambda c: split_block(c, (5,)), response)
simple("generic/3.10/2", "Sends multiple CONTINUATION frames", lambda c: split_block(c, (5, 10)), response)
simple("generic/4/1", "Sends a GET request", lambda c: c.request(), response)
simple("generic/4/2", "Sends a HEAD request", lambda c: c.request(method="HEAD"), response)
simple("generic/4/3", "Sends a POST request", lambda c: (c.post(), c.data(1, b"test")), response)
simple("generic/4/4", "Sends a POST request with trailers", lambda c: (
    c.post([("trailer", "x-test")]), c.data(1, b"test", False), c.headers(1, [("x-test", "ok")])), response)
UA, UA_HUFF = b"\x0auser-agent\x06h2spec", b"\x87\xb5\x05\xb1\x61\xcc\x5a\x93\x84\x9c\x48\xac\xa4"
XTEST, XTEST_HUFF = b"\x06x-test\x06h2spec", b"\x85\xf2\xb2\x4a\x84\xff\x84\x9c\x48\xac\xa4"
for n, (desc, rep) in enumerate([
        ("Sends a indexed header field representation", b"\xba"),
        ("Sends a literal header field with incremental indexing - indexed name", b"\x40" + UA_HUFF),
        ("Sends a literal header field with incremental indexing - indexed name (with Huffman coding)", b"\x40" + UA),
        ("Sends a literal header field with incremental indexing - new name", b"\x40" + XTEST),
        ("Sends a literal header field with incremental indexing - new name (with Huffman coding)",
         b"\x40" + XTEST_HUFF),
        ("Sends a literal header field without indexing - indexed name", b"\x00" + UA),
        ("Sends a literal header field without indexing - indexed name (with Huffman coding)", b"\x00" + UA_HUFF),
        ("Sends a literal header field without indexing - new name", b"\x00" + XTEST),
        ("Sends a literal header field without indexing - new name (huffman encoded)", b"\x00" + XTEST_HUFF),
        ("Sends a literal header field never indexed - indexed name", b"\x10" + UA),
        ("Sends a literal header field never indexed - indexed name (huffman encoded)", b"\x10" + UA_HUFF),
        ("Sends a literal header field never indexed - new name", b"\x10" + XTEST_HUFF),  # sic, as h2spec
        ("Sends a literal header field never indexed - new name (huffman encoded)", b"\x10" + XTEST_HUFF)], 1):
    simple(f"generic/5/{n}", desc, lambda c, rep=rep: c.headers(1, block=c.enc.encode(c.x.common()) + rep), response)
simple("generic/5/14", "Sends a dynamic table size update",  # the encoder starts its block with the update
       lambda c: (setattr(c.enc, "header_table_size", 128), c.request()), response)
simple("generic/5/15", "Sends multiple dynamic table size update",
       lambda c: c.headers(1, block=b"\x3f\x61\x3f\xe1\x1f" + c.enc.encode(c.x.common())), response)

# http2: RFC 9113 ------------------------------------------------------------------------------
UNKNOWN_FRAME = b"\x00\x00\x08\x16\x00\x00\x00\x00\x00" + bytes(8)
case("http2/3.5/1", "Sends client connection preface")(preface)


@case("http2/3.5/2", "Sends invalid connection preface")
def _(x):
    c = Conn(x)
    c.send(b"INVALID CONNECTION PREFACE\r\n\r\n")
    if not x.tls:
        c.flush()
        c.sock.settimeout(max(0.1, x.deadline - time.monotonic()))
        try:
            first_bytes = c.sock.recv(64)
        except OSError:
            first_bytes = b""
        if first_bytes.startswith(b"HTTP/1.1 400"):
            REMARKS.append("served as HTTP/1.1 (400): the listener also speaks HTTP/1.1 without TLS")
            return
        c.buf += first_bytes
    conn_error(c, PROTOCOL_ERROR)


simple("http2/4.1/1", "Sends a frame with unknown type", lambda c: (c.send(UNKNOWN_FRAME), c.ping()), PING_ACK())
simple("http2/4.1/2", "Sends a frame with undefined flag", RAW(b"\x00\x00\x08\x06\x16\x00\x00\x00\x00", bytes(8)),
       lambda c: first(c, PING))
simple("http2/4.1/3", "Sends a frame with reserved field bit", RAW(b"\x00\x00\x08\x06\x16\x80\x00\x00\x00", bytes(8)),
       lambda c: first(c, PING))
simple("http2/4.2/1", "Sends a DATA frame with 2^14 octets in length",
       lambda c: (c.post(), c.data(1, b"x" * c.settings.get(MAX_FRAME_SIZE, MAX_FRAME))), response)
simple("http2/4.2/2", "Sends a large size DATA frame that exceeds the SETTINGS_MAX_FRAME_SIZE",
       lambda c: (c.post(), c.data(1, b"x" * (c.settings.get(MAX_FRAME_SIZE, MAX_FRAME) + 1))),
       STREAM(FRAME_SIZE_ERROR))
simple("http2/4.2/3", "Sends a large size HEADERS frame that exceeds the SETTINGS_MAX_FRAME_SIZE",
       lambda c: c.request(extra=dummy(5)), CONN(FRAME_SIZE_ERROR))
simple("http2/4.3/1", "Sends invalid header block fragment", RAW(b"\x00\x00\x01\x01\x05\x00\x00\x00\x01\x40"),
       CONN(COMPRESSION_ERROR))
# HEADERS without END_HEADERS, another frame, then the CONTINUATION that would end the block
PRIORITY_INSIDE = lambda c: (c.request(end_stream=False, end_headers=False), c.priority(1), c.cont(1))  # noqa: E731
HEADERS_INSIDE = lambda c: (c.request(end_stream=False, end_headers=False), c.request(3), c.cont(1))  # noqa: E731
simple("http2/4.3/2", "Sends a PRIORITY frame while sending the header blocks", PRIORITY_INSIDE, CONN(PROTOCOL_ERROR))
simple("http2/4.3/3", "Sends a HEADERS frame to another stream while sending the header blocks", HEADERS_INSIDE,
       CONN(PROTOCOL_ERROR))
simple("http2/5.1/1", "idle: Sends a DATA frame", lambda c: c.data(1, b"test"), STREAM(PROTOCOL_ERROR, STREAM_CLOSED))
simple("http2/5.1/2", "idle: Sends a RST_STREAM frame", lambda c: c.rst(1), CONN(PROTOCOL_ERROR))
simple("http2/5.1/3", "idle: Sends a WINDOW_UPDATE frame", lambda c: c.window_update(1, 100), CONN(PROTOCOL_ERROR))
simple("http2/5.1/4", "idle: Sends a CONTINUATION frame", lambda c: c.cont(1, c.enc.encode(c.x.common())),
       CONN(PROTOCOL_ERROR))
simple("http2/5.1/5", "half closed (remote): Sends a DATA frame", lambda c: (c.request(), c.data(1, b"test")),
       STREAM(STREAM_CLOSED))
simple("http2/5.1/6", "half closed (remote): Sends a HEADERS frame", lambda c: (c.request(), c.request()),
       STREAM(STREAM_CLOSED))
simple("http2/5.1/7", "half closed (remote): Sends a CONTINUATION frame",
       lambda c: (c.request(), c.cont(1, c.last_block)), STREAM(STREAM_CLOSED, PROTOCOL_ERROR))
simple("http2/5.1/8", "closed: Sends a DATA frame after sending RST_STREAM frame",
       lambda c: (c.request(end_stream=False), c.rst(1), c.data(1, b"test")), STREAM(STREAM_CLOSED))
simple("http2/5.1/9", "closed: Sends a HEADERS frame after sending RST_STREAM frame",
       lambda c: (c.request(end_stream=False), c.rst(1), c.request()), STREAM(STREAM_CLOSED))
simple("http2/5.1/10", "closed: Sends a CONTINUATION frame after sending RST_STREAM frame",
       lambda c: (c.request(end_stream=False), c.rst(1), c.cont(1)), STREAM(STREAM_CLOSED, PROTOCOL_ERROR))
simple("http2/5.1/11", "closed: Sends a DATA frame",
       lambda c: (c.request(), stream_closed(c), c.data(1, b"test")), STREAM(STREAM_CLOSED))
simple("http2/5.1/12", "closed: Sends a HEADERS frame",  # the very same frame again, as h2spec
       lambda c: (c.request(), stream_closed(c), c.headers(1, block=c.last_block)), CONN(STREAM_CLOSED))
simple("http2/5.1/13", "closed: Sends a CONTINUATION frame",
       lambda c: (c.request(), stream_closed(c), c.cont(1)), CONN(STREAM_CLOSED, PROTOCOL_ERROR))
simple("http2/5.1.1/1", "Sends even-numbered stream identifier", lambda c: c.request(2), CONN(PROTOCOL_ERROR))
simple("http2/5.1.1/2", "Sends stream identifier that is numerically smaller than previous",
       lambda c: (c.request(5), c.request(3)), CONN(PROTOCOL_ERROR))


@case("http2/5.1.2/1", "Sends HEADERS frames that causes their advertised concurrent stream limit to be exceeded")
def _(x):
    c = x.conn()
    limit = c.settings.get(MAX_CONCURRENT_STREAMS)
    if limit is None or limit > 1000:
        raise Skip(f"SETTINGS_MAX_CONCURRENT_STREAMS is {limit} (h2spec skips when it is absent)")
    c.settings_frame((INITIAL_WINDOW_SIZE, 0))
    block = c.enc.encode(x.common())
    for sid in range(1, 2 * limit + 2, 2):  # limit + 1 streams
        c.headers(sid, block=block)
    stream_error(c, PROTOCOL_ERROR, REFUSED_STREAM)


simple("http2/5.3.1/1", "Sends HEADERS frame that depends on itself", lambda c: c.request(dep=1),
       STREAM(PROTOCOL_ERROR))
simple("http2/5.3.1/2", "Sends PRIORITY frame that depend on itself", lambda c: c.priority(1, dep=1),
       STREAM(PROTOCOL_ERROR))
BAD_PING = RAW(b"\x00\x00\x08\x06\x00\x00\x00\x00\x03", bytes(8))
simple("http2/5.4.1/1", "Sends an invalid PING frame for connection close", BAD_PING, closes)
simple("http2/5.4.1/2", "Sends an invalid PING frame to receive GOAWAY frame (h2spec --strict)", BAD_PING,
       lambda c: first(c, GOAWAY, expected="GOAWAY(PROTOCOL_ERROR)"))
simple("http2/5.5/1", "Sends an unknown extension frame", lambda c: (c.send(UNKNOWN_FRAME), c.ping()), PING_ACK())
simple("http2/5.5/2", "Sends an unknown extension frame in the middle of a header block",
       lambda c: (c.request(end_headers=False), c.send(UNKNOWN_FRAME)), CONN(PROTOCOL_ERROR))
simple("http2/6.1/1", "Sends a DATA frame with 0x0 stream identifier", lambda c: c.data(0, b"test"),
       CONN(PROTOCOL_ERROR))
simple("http2/6.1/2", "Sends a DATA frame on the stream that is not in \"open\" or \"half-closed (local)\" state",
       lambda c: (c.request(method="POST"), c.data(1, b"test")), STREAM(STREAM_CLOSED))
simple("http2/6.1/3", "Sends a DATA frame with invalid pad length", lambda c: (
    c.post([("content-length", "4")]), c.send(b"\x00\x00\x05\x00\x09\x00\x00\x00\x01\x06Test")), CONN(PROTOCOL_ERROR))
simple("http2/6.2/1", "Sends a HEADERS frame without the END_HEADERS flag, and a PRIORITY frame", PRIORITY_INSIDE,
       CONN(PROTOCOL_ERROR))
simple("http2/6.2/2", "Sends a HEADERS frame to another stream while sending a HEADERS frame", HEADERS_INSIDE,
       CONN(PROTOCOL_ERROR))
simple("http2/6.2/3", "Sends a HEADERS frame with 0x0 stream identifier", lambda c: c.request(0), CONN(PROTOCOL_ERROR))
simple("http2/6.2/4", "Sends a HEADERS frame with invalid pad length",  # PADDED, pad length 1 over what follows
       lambda c: (lambda b: c.raw(HEADERS, 0x0D, 1, bytes([len(b) + 2]) + b))(c.enc.encode(c.x.common())),
       STREAM(PROTOCOL_ERROR))
simple("http2/6.3/1", "Sends a PRIORITY frame with 0x0 stream identifier", lambda c: c.priority(0),
       CONN(PROTOCOL_ERROR))
simple("http2/6.3/2", "Sends a PRIORITY frame with a length other than 5 octets",
       lambda c: (c.request(), c.send(b"\x00\x00\x04\x02\x00\x00\x00\x00\x01\x80\x00\x00\x01")),
       STREAM(FRAME_SIZE_ERROR))
simple("http2/6.4/1", "Sends a RST_STREAM frame with 0x0 stream identifier", lambda c: c.rst(0), CONN(PROTOCOL_ERROR))
simple("http2/6.4/2", "Sends a RST_STREAM frame on a idle stream", lambda c: c.rst(1), CONN(PROTOCOL_ERROR))
simple("http2/6.4/3", "Sends a RST_STREAM frame with a length other than 4 octets",
       lambda c: (c.request(), c.send(b"\x00\x00\x03\x03\x00\x00\x00\x00\x01\x00\x00\x00")), STREAM(FRAME_SIZE_ERROR))
simple("http2/6.5/1", "Sends a SETTINGS frame with ACK flag and payload",
       RAW(b"\x00\x00\x01\x04\x01\x00\x00\x00\x00\x00"), CONN(FRAME_SIZE_ERROR))
simple("http2/6.5/2", "Sends a SETTINGS frame with a stream identifier other than 0x0",
       RAW(b"\x00\x00\x06\x04\x00\x00\x00\x00\x01\x00\x03\x00\x00\x00\x64"), CONN(PROTOCOL_ERROR))
simple("http2/6.5/3", "Sends a SETTINGS frame with a length other than a multiple of 6 octets",
       RAW(b"\x00\x00\x03\x04\x00\x00\x00\x00\x00\x00\x03\x00"), STREAM(PROTOCOL_ERROR, FRAME_SIZE_ERROR))
for n, (desc, setting, code) in enumerate([
        ("SETTINGS_ENABLE_PUSH (0x2): Sends the value other than 0 or 1", (ENABLE_PUSH, 2), PROTOCOL_ERROR),
        ("SETTINGS_INITIAL_WINDOW_SIZE (0x4): Sends the value above the maximum flow control window size",
         (INITIAL_WINDOW_SIZE, 2**31), FLOW_CONTROL_ERROR),
        ("SETTINGS_MAX_FRAME_SIZE (0x5): Sends the value below the initial value", (MAX_FRAME_SIZE, 16383),
         PROTOCOL_ERROR),
        ("SETTINGS_MAX_FRAME_SIZE (0x5): Sends the value above the maximum allowed frame size",
         (MAX_FRAME_SIZE, 2**24), PROTOCOL_ERROR)], 1):
    simple(f"http2/6.5.2/{n}", desc, lambda c, s=setting: c.settings_frame(s), CONN(code))
simple("http2/6.5.2/5", "Sends a SETTINGS frame with unknown identifier",
       lambda c: (c.settings_frame((0xFF, 1)), c.ping()), PING_ACK())
flow_case("http2/6.5.3/1", "Sends multiple values of SETTINGS_INITIAL_WINDOW_SIZE", 1, (100, 1))
simple("http2/6.5.3/2", "Sends a SETTINGS frame without ACK flag", lambda c: c.settings_frame((ENABLE_PUSH, 0)),
       settings_ack)
simple("http2/6.7/1", "Sends a PING frame", lambda c: c.ping(H2SPEC_PING), PING_ACK(H2SPEC_PING))
simple("http2/6.7/2", "Sends a PING frame with ACK", lambda c: (c.ping(b"invalid\0", ack=True), c.ping(H2SPEC_PING)),
       PING_ACK(H2SPEC_PING))
simple("http2/6.7/3", "Sends a PING frame with a stream identifier field value other than 0x0",
       RAW(b"\x00\x00\x08\x06\x00\x00\x00\x00\x01", bytes(8)), CONN(PROTOCOL_ERROR))
simple("http2/6.7/4", "Sends a PING frame with a length field value other than 8",
       RAW(b"\x00\x00\x06\x06\x00\x00\x00\x00\x00", bytes(6)), CONN(FRAME_SIZE_ERROR))
simple("http2/6.8/1", "Sends a GOAWAY frame with a stream identifier other than 0x0",
       RAW(b"\x00\x00\x08\x07\x00\x00\x00\x00\x01", bytes(8)), CONN(PROTOCOL_ERROR))
simple("http2/6.9/1", "Sends a WINDOW_UPDATE frame with a flow control window increment of 0",
       lambda c: c.window_update(0, 0), CONN(PROTOCOL_ERROR))
simple("http2/6.9/2", "Sends a WINDOW_UPDATE frame with a flow control window increment of 0 on a stream",
       lambda c: (c.request(end_stream=False), c.window_update(1, 0)), STREAM(PROTOCOL_ERROR))
simple("http2/6.9/3", "Sends a WINDOW_UPDATE frame with a length other than 4 octets",
       RAW(b"\x00\x00\x03\x08\x00\x00\x00\x00\x00\x00\x00\x01"), CONN(FRAME_SIZE_ERROR))
flow_case("http2/6.9.1/1", "Sends SETTINGS frame to set the initial window size to 1 and sends HEADERS frame", 1, (1,))
simple("http2/6.9.1/2", "Sends multiple WINDOW_UPDATE frames increasing the flow control window to above 2^31-1",
       lambda c: (c.window_update(0, MAX_WINDOW), c.window_update(0, MAX_WINDOW)),
       lambda c: first(c, GOAWAY, lambda f: f.code == FLOW_CONTROL_ERROR, "GOAWAY(FLOW_CONTROL_ERROR)"))
simple("http2/6.9.1/3",
       "Sends multiple WINDOW_UPDATE frames increasing the flow control window to above 2^31-1 on a stream",
       lambda c: (c.request(end_stream=False), c.window_update(1, MAX_WINDOW), c.window_update(1, MAX_WINDOW)),
       lambda c: first(c, RST_STREAM, lambda f: f.sid == 1 and f.code == FLOW_CONTROL_ERROR,
                       "RST_STREAM(stream 1, FLOW_CONTROL_ERROR)"))
flow_case("http2/6.9.2/1", "Changes SETTINGS_INITIAL_WINDOW_SIZE after sending HEADERS frame", 1, (0,),
          lambda c: c.settings_frame((INITIAL_WINDOW_SIZE, 1)))
flow_case("http2/6.9.2/2", "Sends a SETTINGS frame for window size to be negative", 5, (3,),
          lambda c: (first(c, DATA), c.settings_frame((INITIAL_WINDOW_SIZE, 2)),  # the window: 3 - 3 + (2 - 3)
                     settings_ack(c), c.window_update(1, 2)))
simple("http2/6.9.2/3", "Sends a SETTINGS_INITIAL_WINDOW_SIZE settings with an exceeded maximum window size value",
       RAW(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\x80\x00\x00\x00"), CONN(FLOW_CONTROL_ERROR))
simple("http2/6.10/1", "Sends multiple CONTINUATION frames preceded by a HEADERS frame",
       lambda c: (c.request(end_headers=False), c.cont(1, end_headers=False), c.cont(1)), response)
simple("http2/6.10/2", "Sends a CONTINUATION frame followed by any frame other than CONTINUATION",
       lambda c: (c.post(end_headers=False), c.cont(1, end_headers=False), c.data(1, b"test")), CONN(PROTOCOL_ERROR))
simple("http2/6.10/3", "Sends a CONTINUATION frame with 0x0 stream identifier",
       lambda c: (c.request(end_headers=False), c.cont(0)), CONN(PROTOCOL_ERROR))
simple("http2/6.10/4", "Sends a CONTINUATION frame preceded by a HEADERS frame with END_HEADERS flag",
       lambda c: (c.request(), c.cont(1)), CONN(PROTOCOL_ERROR))
simple("http2/6.10/5", "Sends a CONTINUATION frame preceded by a CONTINUATION frame with END_HEADERS flag",
       lambda c: (c.request(end_headers=False), c.cont(1), c.cont(1)), CONN(PROTOCOL_ERROR))
simple("http2/6.10/6", "Sends a CONTINUATION frame preceded by a DATA frame", lambda c: (
    c.post(end_headers=False), c.data(1, b"test"), c.cont(1, end_headers=False), c.cont(0)), CONN(PROTOCOL_ERROR))
simple("http2/7/1", "Sends a GOAWAY frame with unknown error code", lambda c: (c.goaway(0xFF), c.ping(H2SPEC_PING)),
       PING_ACK(H2SPEC_PING, or_close=True))
simple("http2/7/2", "Sends a RST_STREAM frame with unknown error code",
       lambda c: (c.post(), c.rst(1, 0xFF), c.ping()), PING_ACK(or_close=True))
simple("http2/8.1/1", "Sends a second HEADERS frame without the END_STREAM flag", lambda c: (
    c.post(), c.data(1, b"test", False), c.headers(1, [("x-test", "ok")], end_stream=False)), STREAM(PROTOCOL_ERROR))
simple("http2/8.1.2/1", "Sends a HEADERS frame that contains the header field name in uppercase letters",
       lambda c: c.request(extra=[("X-TEST", "ok")]), STREAM(PROTOCOL_ERROR))
simple("http2/8.1.2.1/1", "Sends a HEADERS frame that contains a unknown pseudo-header field",
       lambda c: c.request(extra=[(":test", "ok")]), STREAM(PROTOCOL_ERROR))
simple("http2/8.1.2.1/2", "Sends a HEADERS frame that contains the pseudo-header field defined for response",
       lambda c: c.request(extra=[(":status", "200")]), STREAM(PROTOCOL_ERROR))
simple("http2/8.1.2.1/3", "Sends a HEADERS frame that contains a pseudo-header field as trailers", lambda c: (
    c.post(), c.data(1, b"test", False), c.headers(1, [(":method", "POST")], end_stream=False)), STREAM(PROTOCOL_ERROR))
simple("http2/8.1.2.1/4", "Sends a HEADERS frame that contains a pseudo-header field that appears in a header block "
       "after a regular header field", lambda c: c.request(before=[("x-test", "ok")]), STREAM(PROTOCOL_ERROR))
simple("http2/8.1.2.2/1", "Sends a HEADERS frame that contains the connection-specific header field",
       lambda c: c.request(extra=[("connection", "keep-alive")]), STREAM(PROTOCOL_ERROR))
simple("http2/8.1.2.2/2", "Sends a HEADERS frame that contains the TE header field with any value other than "
       "\"trailers\"", lambda c: c.request(extra=[("trailers", "test"), ("te", "trailers, deflate")]),
       STREAM(PROTOCOL_ERROR))
for n, (desc, edit) in enumerate([
        ("Sends a HEADERS frame with empty \":path\" pseudo-header field", lambda h: h[:2] + [(":path", "")] + h[3:]),
        ("Sends a HEADERS frame that omits \":method\" pseudo-header field", lambda h: h[2:]),  # sic: :scheme too
        ("Sends a HEADERS frame that omits \":scheme\" pseudo-header field", lambda h: h[:1] + h[2:]),
        ("Sends a HEADERS frame that omits \":path\" pseudo-header field", lambda h: h[:2] + h[3:]),
        ("Sends a HEADERS frame with duplicated \":method\" pseudo-header field", lambda h: h + h[0:1]),
        ("Sends a HEADERS frame with duplicated \":scheme\" pseudo-header field", lambda h: h + h[1:2]),
        ("Sends a HEADERS frame with duplicated \":path\" pseudo-header field", lambda h: h + h[2:3])], 1):
    simple(f"http2/8.1.2.3/{n}", desc, lambda c, e=edit: c.headers(1, e(c.x.common())), STREAM(PROTOCOL_ERROR))
simple("http2/8.1.2.6/1", "Sends a HEADERS frame with the \"content-length\" header field which does not equal the "
       "DATA frame payload length", lambda c: (c.post([("content-length", "1")]), c.data(1, b"test")),
       STREAM(PROTOCOL_ERROR))
simple("http2/8.1.2.6/2", "Sends a HEADERS frame with the \"content-length\" header field which does not equal the "
       "sum of the multiple DATA frames payload length", lambda c: (
           c.post([("content-length", "1")]), c.data(1, b"test", False), c.data(1, b"test")), STREAM(PROTOCOL_ERROR))
simple("http2/8.2/1", "Sends a PUSH_PROMISE frame", lambda c: c.put(hf.PushPromiseFrame(
    1, promised_stream_id=3, data=c.enc.encode(c.x.common()), flags=["END_HEADERS"]), 1), CONN(PROTOCOL_ERROR))

# hpack: RFC 7541 decoding errors (h2spec appends / prepends raw representations to a valid block) --
for cid, desc, rep in [
        ("hpack/2.3.3/1", "Sends a indexed header field representation with invalid index", b"\xc6"),
        ("hpack/2.3.3/2", "Sends a literal header field representation with invalid index", b"\x7f\x07\x00"),
        ("hpack/4.2/1", "Sends a dynamic table size update at the end of header block", b"\x21"),
        ("hpack/5.2/1", "Sends a Huffman-encoded string literal representation with padding longer than 7 bits",
         b"\x00\x85\xf2\xb2\x4a\x84\xff\x84\x49\x50\x9f\xff"),
        ("hpack/5.2/2", "Sends a Huffman-encoded string literal representation padded by zero",
         b"\x00\x85\xf2\xb2\x4a\x84\xff\x83\x49\x50\x90"),
        ("hpack/5.2/3", "Sends a Huffman-encoded string literal representation containing the EOS symbol",
         b"\x00\x85\xf2\xb2\x4a\x84\xff\x87\x49\x51\xff\xff\xff\xfa\x7f"),
        ("hpack/6.1/1", "Sends a indexed header field representation with index 0", b"\x80")]:
    simple(cid, desc, lambda c, rep=rep: c.headers(1, block=c.enc.encode(c.x.common()) + rep), CONN(COMPRESSION_ERROR))
simple("hpack/6.3/1", "Sends a dynamic table size update larger than the value of SETTINGS_HEADER_TABLE_SIZE",
       lambda c: c.headers(1, block=hpack_int(c.settings.get(HEADER_TABLE_SIZE, 4096) + 1, 5, 0x20)
                           + c.enc.encode(c.x.common())), CONN(COMPRESSION_ERROR))


# --- floods --------------------------------------------------------------------------------------
def pump(c, blob, until, read):
    """Writes `blob` as fast as the server takes it, until `until`, reading what it sends when
    `read`. Returns (octets written, GOAWAY frame / CLOSED / junk string, or None)."""
    c.flush()
    mv, off, c.auto_window = memoryview(blob), 0, False  # no WINDOW_UPDATE in mid-frame
    while off < len(mv) and time.monotonic() < until:
        while read:
            ev = c.read(time.monotonic() + 0.001)
            if ev == TIMEOUT:
                break
            if not isinstance(ev, Frame) or ev.type == GOAWAY:
                return off, ev
        try:
            c.sock.settimeout(0.05)
            off += c.sock.send(mv[off:off + 65536])
        except (socket.timeout, ssl.SSLWantWriteError):
            pass
        except OSError:
            return off, CLOSED
    return off, None


def ended(ev):
    """Whether the server ended the connection (GOAWAY or close); junk fails the case."""
    if isinstance(ev, str) and ev not in (CLOSED, TIMEOUT):
        raise Fail(f"the server sent {ev}")
    return ev == CLOSED or isinstance(ev, Frame) and ev.type == GOAWAY


def flood_case(cid, desc):
    """A flood: its function returns a failure or None; then the server must answer a fresh GET."""
    def register(fn):
        def run(x):
            x.deadline = time.monotonic() + 3 + x.timeout
            problem = fn(x)
            x.deadline = time.monotonic() + x.timeout
            try:
                c = x.conn()
                c.request()
                status = response(c).status
            except (Fail, OSError) as e:
                raise Fail(f"{problem + '; ' if problem else ''}after the flood, a fresh connection: {e}")
            if problem or status not in ("200", "404"):
                raise Fail(problem or f"after the flood, GET {x.path} on a fresh connection got :status {status}")
        case(cid, desc)(run)
    return register


@flood_case("flood/continuation", "HEADERS then 2,000 CONTINUATION frames of 16 KiB without END_HEADERS")
def _(x):
    c = x.conn()
    c.request(end_headers=False)
    one = frame_bytes(CONTINUATION, 0, 1, literal("x-junk", "a" * 4085) * 4)  # 16384 octets of junk fields
    off, ev = pump(c, one * 2000, time.monotonic() + 3, read=True)
    x.note(f"{off // len(one)} of 2000 frames written, then {ev}")
    if ev is None and off == 2000 * len(one):
        if not ended(wait_for(c, lambda f: f.type == GOAWAY, time.monotonic() + 0.5)):
            return "all 2,000 CONTINUATION frames (32 MiB of header block) went in: no GOAWAY, no close"
    elif ev is None and not ended(wait_for(c, lambda f: f.type == GOAWAY)):
        return f"the server stopped reading after {off // len(one)} frames, yet sent no GOAWAY and did not close"
    ended(ev)


@flood_case("flood/rapid-reset", "2,000 HEADERS + RST_STREAM pairs (CVE-2023-44487)")
def _(x):
    c, last = x.conn(), 2 * 2000 - 1
    blob = b"".join(frame_bytes(HEADERS, END_STREAM | END_HEADERS, sid, c.enc.encode(x.common()))
                    + frame_bytes(RST_STREAM, 0, sid, struct.pack(">I", CANCEL)) for sid in range(1, last + 1, 2))
    off, ev = pump(c, blob, time.monotonic() + 3, read=True)
    ev = wait_for(c, lambda f: f.type == GOAWAY) if ev is None else ev
    if not ended(ev):
        return f"wrote {off} of {len(blob)} octets; no GOAWAY(ENHANCE_YOUR_CALM), no close"
    if ev != CLOSED and ev.code != ENHANCE_YOUR_CALM:
        return f"expected GOAWAY(ENHANCE_YOUR_CALM) or close; got {ev}"
    if ev != CLOSED and ev.last_sid >= last:
        return f"the GOAWAY came only after all 2,000 streams were taken: {ev}"


def flood_then_ping(x, c, one, n):
    """n copies of a frame while not reading (3 s at most); then, reading, the rest and a PING:
    the connection must end (GOAWAY/close) or answer the PING."""
    blob = one * n
    off, ev = pump(c, blob, time.monotonic() + 3, read=False)
    x.note(f"{off // len(one)} of {n} frames written unread, then {ev}")
    if ended(ev):
        return None
    c.deadline = time.monotonic() + x.timeout
    more, ev = pump(c, blob[off:] + frame_bytes(PING, 0, 0, b"liveness"), c.deadline, read=True)
    if not ended(ev):
        ev = wait_for(c, lambda f: f.type == GOAWAY or f.type == PING and f.flags & ACK and f.payload == b"liveness")
    if not isinstance(ev, Frame) and not ended(ev):
        return (f"{off // len(one)} of {n} frames went in unread; then, reading, {more} more octets and "
                f"no PING ACK, no GOAWAY, no close in {x.timeout} s")


@flood_case("flood/settings", "10,000 SETTINGS frames, never reading the ACKs")
def _(x):
    return flood_then_ping(x, x.conn(), frame_bytes(SETTINGS, 0, 0, struct.pack(">HI", ENABLE_PUSH, 0)), 10000)


@flood_case("flood/ping", "10,000 PING frames, never reading the ACKs")
def _(x):
    return flood_then_ping(x, x.conn(), frame_bytes(PING, 0, 0, b"floodpng"), 10000)


@flood_case("flood/empty-data", "POST stream with 10,000 empty DATA frames without END_STREAM")
def _(x):
    c = x.conn()
    c.post()
    return flood_then_ping(x, c, frame_bytes(DATA, 0, 1, b""), 10000)


@flood_case("flood/hpack-bomb", "one 4 KiB dynamic table entry referenced 100 times (400 KB header list)")
def _(x):
    c = x.conn()
    plain = b"".join(literal(k, v) for k, v in x.common())  # no table entry but the bomb's
    c.headers(1, block=plain + literal("x-bomb", "b" * 4000, index=True))
    c.headers(3, block=plain + b"\xbe" * 100)  # index 62: the newest dynamic entry, x-bomb
    ev = wait_for(c, lambda f: f.sid == 3 and f.type in (HEADERS, RST_STREAM)
                  or f.type == GOAWAY and (f.code or f.last_sid < 3))
    if ended(ev) or isinstance(ev, Frame) and (ev.type == RST_STREAM or ev.status == "431"):
        return None
    if isinstance(ev, Frame):
        return f"the 400 KB header list was served: {ev} (want 431, RST_STREAM or GOAWAY)"
    return f"no answer on stream 3: {', '.join(c.seen[-6:])}"


# --- runner ----------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", required=True, help="HOST:PORT of the server")
    ap.add_argument("--tls", action="store_true", help="TLS with ALPN h2 (certificate not verified)")
    ap.add_argument("--authority", help=":authority and SNI (default: as h2spec, HOST:PORT)")
    ap.add_argument("--path", default="/", help=":path of the requests (default /)")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds per case for reactions (max 3)")
    ap.add_argument("--only", help="one case id, or a section such as http2/6.5")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the frames received")
    ap.add_argument("--strict-codes", action="store_true", help="fail a GOAWAY/RST_STREAM with another code")
    args = ap.parse_args()
    global STRICT_CODES
    STRICT_CODES = args.strict_codes
    x, start, passed, failed = Ctx(args), time.monotonic(), 0, 0
    for cid, desc, fn in CASES:
        if args.only and not (cid == args.only or cid.startswith(args.only.rstrip("/") + "/")):
            continue
        problem = None
        if time.monotonic() - start > TOTAL - 3 - 2 * x.timeout:
            problem = f"not run: the {TOTAL} s budget is spent"
        else:
            x.deadline = time.monotonic() + x.timeout
            REMARKS.clear()
            try:
                fn(x)
            except Skip as e:
                print(f"skip {cid} {desc}: {e}", flush=True)
                continue
            except Fail as e:
                problem = str(e)
            except OSError as e:
                problem = f"socket error: {e!r}"
            finally:
                x.close_all()
        if problem:
            failed += 1
            print(f"FAIL {cid} {desc}: {problem}", flush=True)
        else:
            passed += 1
            remark = f" (remark: {'; '.join(REMARKS)})" if REMARKS else ""
            print(f"ok   {cid} {desc}{remark}", flush=True)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
