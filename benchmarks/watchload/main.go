// Command watchload is the watch side of the fan-out benchmarks (scenarios 5 and 10): the
// same command line, standard output and files as `python -m benchmarks.fanout watch`, in a
// compiled program because 10,000 streams at 10 events/s cost the Python reader more CPU
// than the machine has, so that the figure was the load generator's and not the server's.
//
//	watchload watch --url URL --count N --writes FILE --out FILE [--latencies FILE]
//	                [--grace S] [--connect-timeout S]
//
// Connecting is a goroutine per stream (64 at a time), up to its response head. Then a plain
// TCP stream is read by one poller: a thread that waits in epoll_wait and reads each ready
// stream once into one 64 KiB buffer; no goroutine is woken per event and the runtime's
// monitor has no system call to watch (each of which cost more CPU than the event's own
// parse). TLS streams (the API server, at most about a thousand) keep their goroutine.
// No JSON is parsed: a line starting with {"type":"MODIFIED" has its first
// "resourceVersion":" value read, and only the bytes of a line up to that value are ever
// copied. The CPU that is left is the kernel's: the read, and the ACK it sends.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

var (
	prefix = []byte(`{"type":"MODIFIED"`)
	mark   = []byte(`"resourceVersion":"`)
	crlf   = []byte("\r\n")
)

// clock gives arrival times in CLOCK_MONOTONIC seconds, the clock of Python's
// time.monotonic() in the writer process, whose log of write times they are compared with.
type clock struct {
	base  float64
	start time.Time
}

func newClock() clock {
	var ts syscall.Timespec
	before := time.Now()
	_, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1, uintptr(unsafe.Pointer(&ts)), 0)
	after := time.Now()
	if errno != 0 {
		fatalf("clock_gettime(CLOCK_MONOTONIC): %v", errno)
	}
	mid := before.Add(after.Sub(before) / 2)
	return clock{base: float64(ts.Sec) + float64(ts.Nsec)/1e9, start: mid}
}

func (c clock) now() float64 { return c.base + time.Since(c.start).Seconds() }

// watcher is one stream: its parser state (touched by its connecting goroutine up to the
// head, then by the poller only, after registered is set) and its arrivals (shared with
// the main goroutine under mu).
type watcher struct {
	index  int
	conn   net.Conn
	headed bool // the connect slot was given back (head read, or the stream failed)

	head    []byte
	gotHead bool
	status  int
	chunked bool
	done    bool  // the terminal chunk arrived
	left    int64 // >0: data bytes left in this chunk; <0: CRLF bytes still to skip
	sizeBuf []byte

	carry []byte // the current line's first bytes, while it is still undecided
	skip  bool   // the rest of the current line does not matter
	has   bool   // the current line is a MODIFIED event with resourceVersion rv
	rv    int64

	fd         int         // the stream's descriptor once the poller reads it
	registered atomic.Bool // the poller may read it (the head is in, fd is set)

	mu     sync.Mutex
	rvs    []int64
	times  []float64
	ended  bool
	err    string
	frozen bool // the summary has been taken: later arrivals are not counted
}

func (w *watcher) fail(err string) {
	w.mu.Lock()
	w.ended = true
	if w.err == "" && err != "" {
		w.err = err
	}
	w.mu.Unlock()
}

// feed takes the bytes of one read; true when the stream is over.
func (w *watcher) feed(data []byte, now float64) (over bool, err error) {
	if !w.gotHead {
		w.head = append(w.head, data...)
		i := bytes.Index(w.head, []byte("\r\n\r\n"))
		if i < 0 {
			return false, nil
		}
		head, rest := w.head[:i], w.head[i+4:]
		fields := bytes.SplitN(head, []byte(" "), 3)
		if len(fields) < 2 {
			return true, fmt.Errorf("ValueError: bad status line %q", firstLine(head))
		}
		status, perr := strconv.Atoi(string(bytes.TrimSpace(fields[1])))
		if perr != nil {
			return true, fmt.Errorf("ValueError: bad status line %q", firstLine(head))
		}
		w.status = status
		w.chunked = bytes.Contains(bytes.ToLower(head), []byte("chunked"))
		w.gotHead = true
		data = rest
	}
	if !w.chunked {
		return false, w.lines(data, now)
	}
	for len(data) > 0 && !w.done {
		switch {
		case w.left > 0:
			take := min(w.left, int64(len(data)))
			if err := w.lines(data[:take], now); err != nil {
				return true, err
			}
			data = data[take:]
			w.left -= take
			if w.left == 0 {
				w.left = -2
			}
		case w.left < 0:
			skip := min(-w.left, int64(len(data)))
			data = data[skip:]
			w.left += skip
		default:
			var line []byte
			if len(w.sizeBuf) == 0 {
				i := bytes.Index(data, crlf)
				if i < 0 {
					w.sizeBuf = append(w.sizeBuf, data...)
					return false, nil
				}
				line, data = data[:i], data[i+2:]
			} else {
				// The size line was split by a read (rare): finish it a byte at a time.
				for len(data) > 0 && !bytes.HasSuffix(w.sizeBuf, crlf) {
					w.sizeBuf = append(w.sizeBuf, data[0])
					data = data[1:]
				}
				if !bytes.HasSuffix(w.sizeBuf, crlf) {
					return false, nil
				}
				line = w.sizeBuf[:len(w.sizeBuf)-2]
				w.sizeBuf = w.sizeBuf[:0]
			}
			if i := bytes.IndexByte(line, ';'); i >= 0 {
				line = line[:i]
			}
			size, perr := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
			if perr != nil || size < 0 {
				return true, fmt.Errorf("ValueError: bad chunk size %q", line)
			}
			if size == 0 {
				w.done = true
			}
			w.left = size
		}
	}
	return w.done, nil
}

func firstLine(b []byte) []byte {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return b[:i]
	}
	return b
}

// decide tells what a line (or its first bytes, complete=false) is: 0 not known yet,
// 1 of no interest, 2 a MODIFIED event of resourceVersion rv.
func decide(line []byte, complete bool) (state int, rv int64, err error) {
	n := min(len(line), len(prefix))
	if !bytes.Equal(line[:n], prefix[:n]) {
		return 1, 0, nil
	}
	if n < len(prefix) {
		return boolState(complete), 0, nil
	}
	i := markIndex(line)
	if i < 0 {
		return boolState(complete), 0, nil
	}
	value := line[i+len(mark):]
	j := bytes.IndexByte(value, '"')
	if j < 0 {
		if complete {
			return 1, 0, errors.New("ValueError: resourceVersion without its closing quote")
		}
		return 0, 0, nil
	}
	rv, perr := strconv.ParseInt(string(bytes.TrimSpace(value[:j])), 10, 64)
	if perr != nil {
		return 1, 0, fmt.Errorf("ValueError: resourceVersion %q", value[:j])
	}
	return 2, rv, nil
}

// markIndex is bytes.Index(line, mark), anchored on the mark's capital V: the mark begins
// with a quote, the commonest byte of JSON, on which bytes.Index falls back to a slow
// scan (a fifth of the CPU when managedFields put the mark kilobytes into the line).
func markIndex(line []byte) int {
	const v = 9 // mark[v] == 'V'
	for from := v; from < len(line); {
		j := bytes.IndexByte(line[from:], 'V')
		if j < 0 {
			return -1
		}
		at := from + j - v
		if at+len(mark) <= len(line) && bytes.Equal(line[at:at+len(mark)], mark) {
			return at
		}
		from += j + 1
	}
	return -1
}

func boolState(complete bool) int {
	if complete {
		return 1
	}
	return 0
}

// lines takes body bytes: whole lines are decided in place; a line cut by the end of the
// read keeps its first bytes in carry only while it is still undecided.
func (w *watcher) lines(seg []byte, now float64) error {
	for len(seg) > 0 {
		nl := bytes.IndexByte(seg, '\n')
		if !w.skip {
			part := seg
			if nl >= 0 {
				part = seg[:nl]
			}
			line := part
			if len(w.carry) > 0 {
				w.carry = append(w.carry, part...)
				line = w.carry
			}
			state, rv, err := decide(line, nl >= 0)
			if err != nil {
				return err
			}
			switch state {
			case 0:
				if len(w.carry) == 0 {
					w.carry = append(w.carry, part...)
				}
			case 1:
				w.skip = true
				w.carry = w.carry[:0]
			case 2:
				w.skip, w.has, w.rv = true, true, rv
				w.carry = w.carry[:0]
			}
		}
		if nl < 0 {
			return nil
		}
		if w.has {
			w.mu.Lock()
			if !w.frozen {
				w.rvs = append(w.rvs, w.rv)
				w.times = append(w.times, now)
			}
			w.mu.Unlock()
		}
		w.skip, w.has = false, false
		w.carry = w.carry[:0]
		seg = seg[nl+1:]
	}
	return nil
}

type runner struct {
	poller  *poller
	url     *url.URL
	request []byte
	tls     *tls.Config
	clock   clock
	slots   chan struct{}
	heads   sync.WaitGroup
}

// giveBack frees the watcher's connect slot once, when its head is in or it failed.
func (r *runner) giveBack(w *watcher) {
	if !w.headed {
		w.headed = true
		<-r.slots
		r.heads.Done()
	}
}

func (r *runner) run(w *watcher, ctx context.Context) {
	defer r.giveBack(w)
	r.slots <- struct{}{}
	host := r.url.Hostname()
	if host == "" {
		host = "127.0.0.1"
	}
	port := r.url.Port()
	if port == "" && r.tls != nil {
		port = "443"
	} else if port == "" {
		port = "80"
	}
	addr := net.JoinHostPort(host, port)
	var conn net.Conn
	var err error
	if r.tls != nil {
		d := tls.Dialer{Config: r.tls}
		conn, err = d.DialContext(ctx, "tcp", addr)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		w.fail(errorText(err))
		return
	}
	w.mu.Lock()
	w.conn = conn
	closed := w.frozen
	w.mu.Unlock()
	if closed {
		conn.Close()
		return
	}
	if _, err := conn.Write(r.request); err != nil {
		w.fail(errorText(err))
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok && r.poller != nil {
		r.handOver(w, tc)
	} else {
		r.readConn(w, conn)
	}
}

// step hands one read's bytes to the parser; false when the stream is over.
func (r *runner) step(w *watcher, data []byte, now float64) bool {
	over, err := w.feed(data, now)
	if w.gotHead {
		r.giveBack(w)
	}
	if err != nil {
		w.fail(err.Error())
		return false
	}
	if over {
		w.fail("")
		return false
	}
	return true
}

// handOver reads the response head, then gives the stream to the poller (its own copy
// of the descriptor: the Go connection is closed, the socket stays open).
func (r *runner) handOver(w *watcher, tc *net.TCPConn) {
	buf := make([]byte, 4096)
	for !w.gotHead {
		n, err := tc.Read(buf)
		if n > 0 && !r.step(w, buf[:n], r.clock.now()) {
			tc.Close()
			return
		}
		if err != nil {
			if err == io.EOF {
				w.fail("")
			} else {
				w.fail(errorText(err))
			}
			tc.Close()
			return
		}
	}
	rc, err := tc.SyscallConn()
	fd := -1
	if err == nil {
		cerr := rc.Control(func(f uintptr) { fd, err = syscall.Dup(int(f)) })
		if err == nil {
			err = cerr
		}
	}
	tc.Close()
	w.mu.Lock()
	w.conn = nil
	w.mu.Unlock()
	if err != nil {
		w.fail(errorText(err))
		return
	}
	w.fd = fd
	w.registered.Store(true)
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(w.index)}
	if err := syscall.EpollCtl(r.poller.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		w.fail(errorText(os.NewSyscallError("epoll_ctl", err)))
	}
}

// poller reads every plain TCP stream in one loop: level-triggered epoll, one read of each
// ready stream per wake-up, no goroutine woken per event.
type poller struct {
	epfd int
	stop atomic.Bool
	done chan struct{}
}

// epollWait blocks without telling the Go runtime: the poller keeps its P (and its
// thread) for good, so that the runtime's monitor does not wake every 20 µs to take a P
// back from a thread in a system call (a seventh of the reader's CPU otherwise).
//
// Not inlined: its prologue is where the runtime can stop the poller (a collection's
// stop-the-world, which a signal's EINTR lets it reach).
//
//go:noinline
func epollWait(epfd int, events []syscall.EpollEvent, msec int) (int, error) {
	n, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_WAIT, uintptr(epfd),
		uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func (r *runner) poll(watchers []*watcher) {
	p := r.poller
	defer close(p.done)
	events := make([]syscall.EpollEvent, 512)
	buf := make([]byte, 64<<10)
	for !p.stop.Load() {
		n, err := epollWait(p.epfd, events, 100)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			fatalf("epoll_wait: %v", err)
		}
		for _, ev := range events[:n] {
			w := watchers[ev.Fd]
			if !w.registered.Load() || w.fd < 0 {
				continue
			}
			m, err := syscall.Read(w.fd, buf)
			if err == syscall.EAGAIN || err == syscall.EINTR {
				continue
			}
			if err != nil {
				w.fail(errorText(os.NewSyscallError("read", err)))
			} else if m > 0 && r.step(w, buf[:m], r.clock.now()) {
				continue
			} else if m == 0 {
				w.fail("")
			}
			_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, w.fd, nil)
			syscall.Close(w.fd)
			w.fd = -1
		}
	}
}

func (r *runner) readConn(w *watcher, conn net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := conn.Read(buf)
		if n > 0 && !r.step(w, buf[:n], r.clock.now()) {
			return
		}
		if err == io.EOF {
			w.fail("")
			return
		}
		if err != nil {
			w.fail(errorText(err))
			return
		}
	}
}

// errorText leaves out errors the benchmark caused by closing the stream itself.
func errorText(err error) string {
	if errors.Is(err, net.ErrClosed) {
		return ""
	}
	return err.Error()
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "watchload: "+format+"\n", args...)
	os.Exit(1)
}

func raiseNofile() {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur != lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		fatalf("getrusage: %v", err)
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// percentile is fanout._percentile: index round(q/100*(n-1)), Python's rounding (half to
// even), NaN when there is nothing.
func percentile(sorted []float64, q float64) float64 {
	n := len(sorted)
	if n == 0 {
		return math.NaN()
	}
	k := int(math.RoundToEven(q / 100 * float64(n-1)))
	return sorted[min(n-1, max(0, k))]
}

// pyFloat writes a float as Python's json.dumps does (repr: the shortest digits that read
// back, exponent below 1e-4 and from 1e16; NaN and Infinity as bare tokens).
func pyFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // [-]d[.ddd]e±XX
	sign := ""
	if e[0] == '-' {
		sign, e = "-", e[1:]
	}
	mant, expText, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(expText)
	digits := strings.Replace(mant, ".", "", 1)
	if exp < -4 || exp >= 16 {
		m := digits[:1]
		if len(digits) > 1 {
			m += "." + digits[1:]
		}
		es := "+"
		if exp < 0 {
			es, exp = "-", -exp
		}
		return fmt.Sprintf("%s%se%s%02d", sign, m, es, exp)
	}
	if exp < 0 {
		return sign + "0." + strings.Repeat("0", -exp-1) + digits
	}
	if len(digits) <= exp+1 {
		return sign + digits + strings.Repeat("0", exp+1-len(digits)) + ".0"
	}
	return sign + digits[:exp+1] + "." + digits[exp+1:]
}

// pyString writes a string as Python's json.dumps does (ensure_ascii).
func pyString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r < 0x20 || (r >= 0x7f && r < 0x10000):
			fmt.Fprintf(&b, `\u%04x`, r)
		case r >= 0x10000:
			r -= 0x10000
			fmt.Fprintf(&b, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// target is the request line's target as urlsplit gives it: the path and query unchanged.
func target(raw string) string {
	rest := raw
	if i := strings.Index(rest, "://"); i >= 0 {
		rest = rest[i+3:]
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[i:]
	} else {
		rest = ""
	}
	if i := strings.IndexByte(rest, '#'); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

func tlsConfig(host string) *tls.Config {
	ca := os.Getenv("BENCH_CA")
	if ca == "" {
		return &tls.Config{InsecureSkipVerify: true, ServerName: host}
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		fatalf("BENCH_CA: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fatalf("BENCH_CA %s: no certificate", ca)
	}
	return &tls.Config{RootCAs: pool, ServerName: host}
}

func main() {
	if len(os.Args) < 2 || os.Args[1] != "watch" {
		fatalf("usage: watchload watch --url URL --count N --writes FILE --out FILE" +
			" [--latencies FILE] [--grace S] [--connect-timeout S]")
	}
	fs := flag.NewFlagSet("watch", flag.ExitOnError)
	rawURL := fs.String("url", "", "the watch URL")
	count := fs.Int("count", 0, "how many streams")
	writesPath := fs.String("writes", "", "the writer's log: {resourceVersion: monotonic time}")
	outPath := fs.String("out", "", "the summary, JSON")
	latPath := fs.String("latencies", "", "sorted latencies, float64")
	grace := fs.Float64("grace", 10, "seconds to wait for the last events after stop")
	connectTimeout := fs.Float64("connect-timeout", 120, "seconds for every stream to get its head")
	_ = fs.Parse(os.Args[2:])
	if *rawURL == "" || *count <= 0 || *writesPath == "" || *outPath == "" {
		fatalf("--url, --count, --writes and --out are required")
	}
	debug.SetGCPercent(400) // the heap is the arrival logs; fewer collections, less CPU
	raiseNofile()

	u, err := url.Parse(*rawURL)
	if err != nil {
		fatalf("--url: %v", err)
	}
	auth := ""
	if token := os.Getenv("BENCH_TOKEN"); token != "" {
		auth = "Authorization: Bearer " + token + "\r\n"
	}
	r := &runner{
		url: u,
		request: []byte("GET " + target(*rawURL) + " HTTP/1.1\r\nHost: " + u.Host + "\r\n" + auth +
			"Accept: application/json\r\n\r\n"),
		clock: newClock(),
		slots: make(chan struct{}, 64),
	}
	if strings.HasPrefix(*rawURL, "https") {
		r.tls = tlsConfig(u.Hostname())
		// A goroutine per stream: one thread spends less CPU per event than two
		// handing goroutines to each other.
		runtime.GOMAXPROCS(1)
	} else {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			fatalf("epoll_create1: %v", err)
		}
		r.poller = &poller{epfd: epfd, done: make(chan struct{})}
		// One P is the poller's for good; the other runs the rest (connects, stop).
		runtime.GOMAXPROCS(2)
	}
	watchers := make([]*watcher, *count)
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(*connectTimeout*float64(time.Second)))
	for i := range watchers {
		watchers[i] = &watcher{index: i, fd: -1}
	}
	if r.poller != nil {
		go r.poll(watchers)
	}
	r.heads.Add(*count)
	for _, w := range watchers {
		go r.run(w, ctx)
	}
	allHeaded := make(chan struct{})
	go func() { r.heads.Wait(); close(allHeaded) }()
	select {
	case <-allHeaded:
	case <-ctx.Done():
		fatalf("TimeoutError: not every watch had its response head after %gs", *connectTimeout)
	}
	cancel()
	connected := 0
	for _, w := range watchers {
		w.mu.Lock()
		if w.status == 200 && !w.ended {
			connected++
		}
		w.mu.Unlock()
	}
	fmt.Printf("ready %d %.2f\n", connected, time.Since(t0).Seconds())
	cpu0 := cpuSeconds()

	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // "stop"
	text, err := os.ReadFile(*writesPath)
	if err != nil {
		fatalf("--writes: %v", err)
	}
	var logged map[string]float64
	if err := json.Unmarshal(text, &logged); err != nil {
		fatalf("--writes: %v", err)
	}
	writes := make(map[int64]float64, len(logged))
	for k, v := range logged {
		rv, err := strconv.ParseInt(k, 10, 64)
		if err != nil {
			fatalf("--writes: resourceVersion %q", k)
		}
		writes[rv] = v
	}
	index := make(map[int64]int, len(writes))
	for rv := range writes {
		index[rv] = len(index)
	}
	words := (len(index) + 63) / 64
	seen := make([][]uint64, len(watchers))
	seenCount := make([]int, len(watchers))
	scanned := make([]int, len(watchers))
	for i := range seen {
		seen[i] = make([]uint64, words)
	}
	// The written versions each watcher has had so far, from its arrivals not yet looked at.
	catchUp := func(i int) (ended bool) {
		w := watchers[i]
		w.mu.Lock()
		rvs, ended := w.rvs, w.ended
		w.mu.Unlock()
		for _, rv := range rvs[scanned[i]:] {
			if k, ok := index[rv]; ok && seen[i][k/64]&(1<<(k%64)) == 0 {
				seen[i][k/64] |= 1 << (k % 64)
				seenCount[i]++
			}
		}
		scanned[i] = len(rvs)
		return ended
	}
	deadline := time.Now().Add(time.Duration(*grace * float64(time.Second)))
	for time.Now().Before(deadline) {
		all := true
		for i := range watchers {
			if !catchUp(i) && seenCount[i] < len(index) {
				all = false
			}
		}
		if all {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	endedEarly := 0
	errs := map[string]bool{}
	for _, w := range watchers {
		w.mu.Lock()
		if w.ended {
			endedEarly++
		}
		if w.err != "" {
			errs[w.err] = true
		}
		w.mu.Unlock()
	}
	cpu := cpuSeconds() - cpu0 // reading the streams, not the matching below
	if r.poller != nil {
		r.poller.stop.Store(true)
		<-r.poller.done
	}
	var latencies []float64
	delivered := 0
	for _, w := range watchers {
		w.mu.Lock()
		w.frozen = true
		conn, rvs, times := w.conn, w.rvs, w.times
		w.mu.Unlock()
		if conn != nil {
			conn.Close()
		}
		if w.registered.Load() && w.fd >= 0 {
			syscall.Close(w.fd)
		}
		got := make(map[int64]bool)
		for j, rv := range rvs {
			if at, ok := writes[rv]; ok && !got[rv] {
				got[rv] = true
				latencies = append(latencies, (times[j]-at)*1000)
			}
		}
		delivered += len(got)
	}
	slices.Sort(latencies)
	errList := make([]string, 0, len(errs))
	for e := range errs {
		errList = append(errList, e)
	}
	sort.Strings(errList)
	errList = errList[:min(5, len(errList))]
	quoted := make([]string, len(errList))
	for i, e := range errList {
		quoted[i] = pyString(e)
	}
	maxMs := math.NaN()
	if len(latencies) > 0 {
		maxMs = latencies[len(latencies)-1]
	}
	summary := fmt.Sprintf(`{"watchers": %d, "connected": %d, "ended_early": %d, "errors": [%s], `+
		`"sent": %d, "expected": %d, "delivered": %d, "p50_ms": %s, "p99_ms": %s, "max_ms": %s, `+
		`"cpu_s": %s}`,
		*count, connected, endedEarly, strings.Join(quoted, ", "), len(writes), len(writes)**count,
		delivered, pyFloat(percentile(latencies, 50)), pyFloat(percentile(latencies, 99)),
		pyFloat(maxMs), pyFloat(cpu))
	if *latPath != "" {
		raw := make([]byte, 8*len(latencies))
		for i, v := range latencies {
			binary.LittleEndian.PutUint64(raw[8*i:], math.Float64bits(v))
		}
		if err := os.WriteFile(*latPath, raw, 0o644); err != nil {
			fatalf("--latencies: %v", err)
		}
	}
	if err := os.WriteFile(*outPath, []byte(summary), 0o644); err != nil {
		fatalf("--out: %v", err)
	}
}
