// Command loadgen is the benchmark harness's load generator: HTTP/1.1 over
// mTLS with a client certificate, one fixed POST, every response's status
// and body checked. Standard library only, so it builds with no module
// downloads. It prints one JSON object on stdout (idle mode: two lines).
//
// Modes:
//
//	sat   keep-alive saturation: -c connections, -n requests in all
//	rate  fixed rate: -rate req/s over -c connections for -duration; latency
//	      from each request's scheduled send time (coordinated omission
//	      corrected: a request that waits for a busy connection counts its wait)
//	conn  a new connection per request: full mTLS handshake (no session
//	      cache, so never resumed), one POST with "Connection: close"
//	idle  open -n connections, one request on each, hold them; print a JSON
//	      line, wait for a line on stdin, then report how many are still open
//
// It must never retry a failed request or count it as a success: every
// failure is reported, and the harness fails the run on any.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// options are the command-line flags.
type options struct {
	mode       string
	addr       string
	path       string
	serverName string
	certFile   string
	keyFile    string
	caFile     string
	bodyFile   string
	expectFile string
	headers    headerList
	conns      int
	requests   int
	rate       int
	duration   time.Duration
}

type headerList []string

func (h *headerList) String() string     { return strings.Join(*h, ", ") }
func (h *headerList) Set(v string) error { *h = append(*h, v); return nil }

// target is what every mode sends and expects.
type target struct {
	opts   options
	tls    *tls.Config
	body   []byte
	expect []byte
	url    string
	host   string
}

// tally counts outcomes; one per worker, merged at the end (no locks on the
// hot path).
type tally struct {
	ok, non2xx, mismatch, errors int64
	statuses                     map[int]int64
	errSamples                   []string
	latencies                    []time.Duration
}

func main() {
	opts := parseFlags()
	t, err := newTarget(opts)
	if err != nil {
		fail(err)
	}
	var out map[string]any
	switch opts.mode {
	case "sat":
		out = runSaturation(t)
	case "rate":
		out = runRate(t)
	case "conn":
		out = runNewConns(t)
	case "idle":
		runIdle(t)
		return
	default:
		fail(fmt.Errorf("unknown -mode %q (sat, rate, conn, idle)", opts.mode))
	}
	emit(out)
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.mode, "mode", "sat", "sat, rate, conn or idle")
	flag.StringVar(&o.addr, "addr", "127.0.0.1:8443", "host:port to connect to")
	flag.StringVar(&o.path, "path", "/mcp", "request path")
	flag.StringVar(&o.serverName, "servername", "localhost", "name the server certificate is checked against (also the Host header)")
	flag.StringVar(&o.certFile, "cert", "", "client certificate chain (PEM)")
	flag.StringVar(&o.keyFile, "key", "", "client key (PEM)")
	flag.StringVar(&o.caFile, "cacert", "", "CA bundle the server is verified against (PEM)")
	flag.StringVar(&o.bodyFile, "body", "", "request body file")
	flag.StringVar(&o.expectFile, "expect", "", "exact expected response body file")
	flag.Var(&o.headers, "H", "request header 'Name: value' (repeatable)")
	flag.IntVar(&o.conns, "c", 32, "connections (workers)")
	flag.IntVar(&o.requests, "n", 1000, "requests in all (sat, conn), connections (idle)")
	flag.IntVar(&o.rate, "rate", 1000, "requests per second (rate)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long to send (rate)")
	flag.Parse()
	if o.conns < 1 || o.requests < 1 || o.rate < 1 {
		fail(fmt.Errorf("-c, -n and -rate must be at least 1"))
	}
	return o
}

func newTarget(o options) (*target, error) {
	cert, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(o.caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("no CA certificates in %s", o.caFile)
	}
	body, err := os.ReadFile(o.bodyFile)
	if err != nil {
		return nil, err
	}
	expect, err := os.ReadFile(o.expectFile)
	if err != nil {
		return nil, err
	}
	_, port, err := net.SplitHostPort(o.addr)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   o.serverName,
		NextProtos:   []string{"http/1.1"},
		// ClientSessionCache stays nil: every handshake is a full one.
	}
	return &target{opts: o, tls: cfg, body: body, expect: expect,
		url: "https://" + o.addr + o.path, host: net.JoinHostPort(o.serverName, port)}, nil
}

// transport is an HTTP/1.1-only client transport with at most conns
// connections to the target, dialled with TCP_NODELAY (Go's default).
func (t *target) transport(keepAlive bool) *http.Transport {
	return &http.Transport{
		TLSClientConfig:     t.tls,
		DisableKeepAlives:   !keepAlive,
		DisableCompression:  true,
		MaxConnsPerHost:     t.opts.conns,
		MaxIdleConnsPerHost: t.opts.conns,
		MaxIdleConns:        t.opts.conns,
		IdleConnTimeout:     10 * time.Minute,
		// A non-nil empty map turns HTTP/2 off.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
}

func (t *target) newRequest(closeConn bool) *http.Request {
	req, err := http.NewRequest(http.MethodPost, t.url, bytes.NewReader(t.body))
	if err != nil {
		fail(err) // the URL is built from validated flags
	}
	req.Host = t.host
	req.Header.Set("Content-Type", "application/json")
	for _, h := range t.opts.headers {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	req.Close = closeConn
	return req
}

// do sends one request and records its outcome; latency runs from since.
func (t *target) do(c *http.Client, req *http.Request, since time.Time, tl *tally) {
	resp, err := c.Do(req)
	if err != nil {
		tl.failed(err)
		return
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	tl.check(resp.StatusCode, got, err, t.expect)
	tl.latencies = append(tl.latencies, time.Since(since))
}

func newTally() *tally { return &tally{statuses: map[int]int64{}} }

func (tl *tally) failed(err error) {
	tl.errors++
	if len(tl.errSamples) < 5 {
		tl.errSamples = append(tl.errSamples, err.Error())
	}
}

func (tl *tally) check(status int, got []byte, readErr error, expect []byte) {
	tl.statuses[status]++
	switch {
	case readErr != nil:
		tl.failed(readErr)
	case status < 200 || status > 299:
		tl.non2xx++
	case !bytes.Equal(got, expect):
		tl.mismatch++
		if len(tl.errSamples) < 5 {
			tl.errSamples = append(tl.errSamples, "body: "+string(got[:min(len(got), 200)]))
		}
	default:
		tl.ok++
	}
}

// merge adds up the workers' tallies into one JSON-ready summary.
func merge(tallies []*tally, elapsed time.Duration) map[string]any {
	all := newTally()
	for _, tl := range tallies {
		all.ok += tl.ok
		all.non2xx += tl.non2xx
		all.mismatch += tl.mismatch
		all.errors += tl.errors
		for k, v := range tl.statuses {
			all.statuses[k] += v
		}
		for _, s := range tl.errSamples {
			if len(all.errSamples) < 5 {
				all.errSamples = append(all.errSamples, s)
			}
		}
		all.latencies = append(all.latencies, tl.latencies...)
	}
	sort.Slice(all.latencies, func(i, j int) bool { return all.latencies[i] < all.latencies[j] })
	statuses := map[string]int64{}
	for k, v := range all.statuses {
		statuses[fmt.Sprint(k)] = v
	}
	done := all.ok + all.non2xx + all.mismatch
	return map[string]any{
		"ok": all.ok, "non2xx": all.non2xx, "body_mismatch": all.mismatch,
		"errors": all.errors, "error_samples": all.errSamples, "statuses": statuses,
		"bad":       all.non2xx + all.mismatch + all.errors,
		"elapsed_s": elapsed.Seconds(),
		"per_s":     float64(done) / elapsed.Seconds(),
		"p50_ms":    percentile(all.latencies, 0.50),
		"p99_ms":    percentile(all.latencies, 0.99),
		"p999_ms":   percentile(all.latencies, 0.999),
		"max_ms":    percentile(all.latencies, 1),
	}
}

// percentile of sorted latencies, in milliseconds (nearest rank).
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return float64(sorted[i].Microseconds()) / 1000
}

// runWorkers runs n workers to completion and returns their tallies and the
// wall time.
func runWorkers(n int, work func(w int, tl *tally)) ([]*tally, time.Duration) {
	tallies := make([]*tally, n)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < n; w++ {
		tallies[w] = newTally()
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			work(w, tallies[w])
		}(w)
	}
	wg.Wait()
	return tallies, time.Since(start)
}

func emit(v any) {
	if err := json.NewEncoder(os.Stdout).Encode(v); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	os.Exit(2)
}
