package listener

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// childEnv makes the test binary the EMFILE test's server process.
const childEnv = "SIDEMESH_LISTENER_EMFILE_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		runLowFDServer()
		return
	}
	goleak.VerifyTestMain(m)
}

// runLowFDServer serves "ok" over HTTP on a Socket with only a few file
// descriptors to spare, prints its address, and runs until stdin closes.
func runLowFDServer() {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	// The listener, the epoll and pipe descriptors the runtime needs, and
	// room for a handful of connections.
	limit := uint64(len(fds) + 10)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: limit, Max: limit}); err != nil {
		fmt.Println("error:", err)
		return
	}
	sock, err := Listen(context.Background(), "127.0.0.1:0", nil)
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	srv := NewHTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), HTTPOptions{})
	srv.Serve(sock)
	fmt.Println(sock.Addr())
	io.Copy(io.Discard, os.Stdin)
}

// TestAcceptSurvivesEMFILE: a process that runs out of file descriptors
// fails to accept (EMFILE) until connections close. The socket must back
// off and keep accepting, as net/http does; it once stopped for good, and
// the address stayed dead until a restart.
func TestAcceptSurvivesEMFILE(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.HasPrefix(line, "error:") {
		t.Fatalf("server process: %q %v", line, err)
	}
	addr := strings.TrimSpace(line)

	// Hold connections open until the server has no descriptor left for
	// the next one.
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 30 {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	probe := &http.Client{Timeout: 300 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	defer probe.CloseIdleConnections()
	if resp, err := probe.Get("http://" + addr + "/"); err == nil {
		resp.Body.Close()
		t.Fatal("the server answered with 30 connections open: its descriptor limit was not reached, the test proves nothing")
	}

	// Descriptors come back as the connections close: it must serve again.
	for _, c := range held {
		c.Close()
	}
	held = nil
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	meshtest.Eventually(t, 15*time.Second, "an answer once descriptors were free again", func() error {
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "ok" {
			return fmt.Errorf("answered %d %q", resp.StatusCode, b)
		}
		return nil
	})
}
