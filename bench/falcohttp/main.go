// Command falcohttp drives an HTTP alert receiver the way Falco's http_output does, and
// serves the minimal sink the receivers are compared with.
//
//	falcohttp sink -listen 127.0.0.1:0            // prints "listening on ADDR"
//	falcohttp post -url URL -alerts FILE [-keepalive] [-repeat N]
//
// Falco's http_output posts every alert on its own, waits for the answer before the
// next one, and opens a new connection per alert unless http_output.keep_alive is true
// (falco/userspace/falco/outputs_http.cpp). post does the same from one goroutine and
// prints a JSON line: alerts, seconds, alerts_per_s, non_2xx, errors.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: falcohttp sink|post [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "sink":
		sink(os.Args[2:])
	case "post":
		post(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "falcohttp: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

// sink answers 200 to every request once it has read the whole body: what a receiver
// that does nothing with an alert costs.
func sink(args []string) {
	flags := flag.NewFlagSet("sink", flag.ExitOnError)
	listen := flags.String("listen", "127.0.0.1:0", "address to listen on")
	_ = flags.Parse(args)
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", listener.Addr())
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusOK)
	})
	if err := http.Serve(listener, handler); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

type result struct {
	Alerts     int     `json:"alerts"`
	Seconds    float64 `json:"seconds"`
	AlertsPerS float64 `json:"alerts_per_s"`
	Non2xx     int     `json:"non_2xx"`
	Errors     int     `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
}

func post(args []string) {
	flags := flag.NewFlagSet("post", flag.ExitOnError)
	url := flags.String("url", "", "receiver URL")
	alerts := flags.String("alerts", "", "file of alerts, one JSON document per line")
	keepalive := flags.Bool("keepalive", false, "reuse the connection (http_output.keep_alive)")
	repeat := flags.Int("repeat", 1, "send the file this many times")
	_ = flags.Parse(args)
	lines, err := readLines(*alerts)
	if err != nil || *url == "" || len(lines) == 0 {
		fmt.Fprintln(os.Stderr, "falcohttp post: -url and a non-empty -alerts file are needed:", err)
		os.Exit(2)
	}
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: !*keepalive, MaxIdleConnsPerHost: 1},
	}
	var res result
	started := time.Now()
	for r := 0; r < *repeat; r++ {
		for _, line := range lines {
			req, _ := http.NewRequest(http.MethodPost, *url, bytes.NewReader(line))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("User-Agent", "falcosecurity/falco")
			resp, err := client.Do(req)
			res.Alerts++
			if err != nil {
				res.Errors++
				if res.FirstError == "" {
					res.FirstError = err.Error()
				}
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode/100 != 2 {
				res.Non2xx++
				if res.FirstError == "" {
					res.FirstError = resp.Status
				}
			}
		}
	}
	res.Seconds = time.Since(started).Seconds()
	res.AlertsPerS = float64(res.Alerts) / res.Seconds
	_ = json.NewEncoder(os.Stdout).Encode(res)
}

func readLines(path string) ([][]byte, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	var lines [][]byte
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 1<<20), 16<<20)
	for scanner.Scan() {
		if len(bytes.TrimSpace(scanner.Bytes())) > 0 {
			lines = append(lines, append([]byte(nil), scanner.Bytes()...))
		}
	}
	return lines, scanner.Err()
}
