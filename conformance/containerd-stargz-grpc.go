// A containerd-stargz-grpc daemon for the conformance suite.
//
// Debian packages stargz-snapshotter's Go library
// (golang-github-containerd-stargz-snapshotter-dev) but ships no daemon built
// from it, so conformance/stargz.py builds this one, offline, against those
// sources. It serves stargz's snapshotter (service.NewStargzSnapshotterService,
// the same constructor upstream's daemon calls) over containerd's snapshots
// gRPC API on a unix socket, as a proxy plugin would be reached.
//
// What it leaves out: registry credentials and their keychains (the suite
// never sets the labels that make stargz fetch a remote layer), and the
// prefetch, background fetch and metrics of remote layers (switched off, so
// that a snapshot that did get remote labels fails instead of fetching).
//
//	containerd-stargz-grpc --root DIR --address SOCKET
//
// Once it listens it writes a line containing "ready: " to stderr. SIGTERM
// and SIGINT stop it: the server stops taking calls and the socket goes. As
// upstream's daemon does, only SIGINT also closes the snapshotter, which in
// stargz means cleaning up: its Close unmounts and removes the directory of
// every snapshot (snapshot.go Close: cleanup with cleanupCommitted), so that
// remote layers are mounted afresh on the next start.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/stargz-snapshotter/service"
	"google.golang.org/grpc"
)

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "containerd-stargz-grpc: %s: %v\n", what, err)
	os.Exit(1)
}

func main() {
	root := flag.String("root", "", "directory of the snapshotter's state (required)")
	socket := flag.String("address", "", "unix socket to serve on (required)")
	flag.Parse()
	if *root == "" || *socket == "" {
		fmt.Fprintln(os.Stderr, "usage: containerd-stargz-grpc --root DIR --address SOCKET")
		os.Exit(2)
	}

	// overlayfs underneath: refuses a filesystem without d_type, as
	// containerd's overlayfs plugin does.
	if err := service.Supported(*root); err != nil {
		fail("the root cannot hold stargz snapshots", err)
	}
	var config service.Config
	config.NoPrefetch = true
	config.NoBackgroundFetch = true
	config.NoPrometheus = true
	snapshotter, err := service.NewStargzSnapshotterService(context.Background(), *root, &config)
	if err != nil {
		fail("opening the snapshotter", err)
	}

	if err := os.MkdirAll(filepath.Dir(*socket), 0o700); err != nil {
		fail("making the socket's directory", err)
	}
	if err := os.Remove(*socket); err != nil && !os.IsNotExist(err) {
		fail("removing a stale socket", err)
	}
	listener, err := net.Listen("unix", *socket)
	if err != nil {
		fail("listening", err)
	}
	server := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(snapshotter))
	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	fmt.Fprintf(os.Stderr, "containerd-stargz-grpc ready: %s\n", *socket)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	var got os.Signal
	select {
	case got = <-stop:
		fmt.Fprintf(os.Stderr, "containerd-stargz-grpc: %v: stopping\n", got)
	case err := <-served:
		fail("serving", err)
	}
	server.Stop() // closes the listener, which removes the socket
	if got == syscall.SIGINT {
		if err := snapshotter.Close(); err != nil {
			fail("closing the snapshotter", err)
		}
	}
}
