package main

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// runSaturation: -c keep-alive connections, -n requests, each worker sends
// its next request as soon as the last is answered.
func runSaturation(t *target) map[string]any {
	client := &http.Client{Transport: t.transport(true), Timeout: 60 * time.Second}
	var next int64
	n := int64(t.opts.requests)
	tallies, elapsed := runWorkers(t.opts.conns, func(_ int, tl *tally) {
		for atomic.AddInt64(&next, 1) <= n {
			t.do(client, t.newRequest(false), time.Now(), tl)
		}
	})
	out := merge(tallies, elapsed)
	out["mode"], out["requests"], out["connections"] = "sat", n, t.opts.conns
	return out
}

// runRate: request i is due at start + i/rate; a worker takes the next
// request, waits until it is due (if it is not late already) and measures
// its latency from that due time, so a stalled server is charged for every
// request that should have been sent meanwhile.
func runRate(t *target) map[string]any {
	client := &http.Client{Transport: t.transport(true), Timeout: 60 * time.Second}
	total := int64(t.opts.duration.Seconds() * float64(t.opts.rate))
	interval := time.Second / time.Duration(t.opts.rate)
	start := time.Now().Add(50 * time.Millisecond)
	var next int64
	tallies, _ := runWorkers(t.opts.conns, func(_ int, tl *tally) {
		for {
			i := atomic.AddInt64(&next, 1) - 1
			if i >= total {
				return
			}
			due := start.Add(time.Duration(i) * interval)
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
			t.do(client, t.newRequest(false), due, tl)
		}
	})
	out := merge(tallies, time.Since(start))
	out["mode"], out["requests"], out["connections"] = "rate", total, t.opts.conns
	out["rate"], out["duration_s"] = t.opts.rate, t.opts.duration.Seconds()
	return out
}

// runNewConns: every request on a new connection with a full handshake.
func runNewConns(t *target) map[string]any {
	client := &http.Client{Transport: t.transport(false), Timeout: 60 * time.Second}
	var next int64
	n := int64(t.opts.requests)
	tallies, elapsed := runWorkers(t.opts.conns, func(_ int, tl *tally) {
		for atomic.AddInt64(&next, 1) <= n {
			t.do(client, t.newRequest(true), time.Now(), tl)
		}
	})
	out := merge(tallies, elapsed)
	out["mode"], out["requests"], out["connections"] = "conn", n, t.opts.conns
	return out
}

// runIdle opens -n connections (-c at a time), sends one keep-alive request
// on each and holds them. It prints a JSON line once all are open, waits for
// a line on stdin, prints how many are still open, and closes them.
func runIdle(t *target) {
	conns := make([]*tls.Conn, t.opts.requests)
	var next int64
	n := int64(t.opts.requests)
	tallies, elapsed := runWorkers(t.opts.conns, func(_ int, tl *tally) {
		for {
			i := atomic.AddInt64(&next, 1) - 1
			if i >= n {
				return
			}
			conns[i] = t.openIdle(tl)
		}
	})
	out := merge(tallies, elapsed)
	out["mode"], out["requests"] = "idle", n
	emit(out)
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	emit(map[string]any{"alive": countAlive(conns)})
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// openIdle dials one connection with TCP_NODELAY, sends one request and
// reads the whole response; returns the connection, or nil if it failed.
func (t *target) openIdle(tl *tally) *tls.Conn {
	start := time.Now()
	raw, err := net.DialTimeout("tcp", t.opts.addr, 30*time.Second)
	if err != nil {
		tl.failed(err)
		return nil
	}
	if err := raw.(*net.TCPConn).SetNoDelay(true); err != nil {
		tl.failed(err)
	}
	c := tls.Client(raw, t.tls)
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := t.newRequest(false).Write(c); err != nil {
		tl.failed(err)
		c.Close()
		return nil
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		tl.failed(err)
		c.Close()
		return nil
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	tl.check(resp.StatusCode, got, err, t.expect)
	tl.latencies = append(tl.latencies, time.Since(start))
	_ = c.SetDeadline(time.Time{})
	return c
}

// countAlive: a connection that has nothing to read within a moment is
// still open; one that reads EOF or fails was closed by the server.
func countAlive(conns []*tls.Conn) int {
	var alive int64
	var wg sync.WaitGroup
	for _, c := range conns {
		if c == nil {
			continue
		}
		wg.Add(1)
		go func(c *tls.Conn) {
			defer wg.Done()
			_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			var b [1]byte
			_, err := c.Read(b[:])
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				atomic.AddInt64(&alive, 1)
			}
		}(c)
	}
	wg.Wait()
	return int(alive)
}
