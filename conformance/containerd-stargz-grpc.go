// containerd-stargz-grpc for the conformance suite, built offline from
// Debian's golang-github-containerd-stargz-snapshotter-dev (0.12.0) by
// conformance/stargz.py. Debian's stargz-snapshotter package ships only
// ctr-remote, not this daemon; this is upstream's
// cmd/containerd-stargz-grpc/main.go (v0.12.0) without what Debian does not
// package: the CRI and kubeconfig keychains (k8s.io/cri-api), IPFS, the bolt
// metadata store, the metrics and debug listeners. What remains is upstream's
// path: service.NewStargzSnapshotterService behind containerd's
// contrib/snapshotservice, the same flags (--address, --root, --config,
// --log-level), SIGINT closes the snapshotter (unmounts), SIGTERM does not.
// It says "ready: " on stderr once it listens (conformance/serve.py waits for it).

package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/stargz-snapshotter/fs"
	memorymetadata "github.com/containerd/stargz-snapshotter/metadata/memory"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/containerd/stargz-snapshotter/service/keychain/dockerconfig"
	"github.com/containerd/stargz-snapshotter/service/resolver"
	"github.com/pelletier/go-toml"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

var (
	address    = flag.String("address", "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock", "address for the snapshotter's GRPC server")
	configPath = flag.String("config", "", "path to the configuration file")
	logLevel   = flag.String("log-level", "info", "set the logging level")
	rootDir    = flag.String("root", "/var/lib/containerd-stargz-grpc", "path to the root directory for this snapshotter")
)

func main() {
	flag.Parse()
	lvl, err := logrus.ParseLevel(*logLevel)
	if err != nil {
		log.L.WithError(err).Fatal("failed to prepare logger")
	}
	logrus.SetLevel(lvl)
	ctx := log.WithLogger(context.Background(), log.L)
	var config service.Config
	if *configPath != "" {
		tree, err := toml.LoadFile(*configPath)
		if err != nil {
			log.G(ctx).WithError(err).Fatalf("failed to load config file %q", *configPath)
		}
		if err := tree.Unmarshal(&config); err != nil {
			log.G(ctx).WithError(err).Fatalf("failed to unmarshal config file %q", *configPath)
		}
	}
	if err := service.Supported(*rootDir); err != nil {
		log.G(ctx).WithError(err).Fatalf("snapshotter is not supported")
	}
	rpc := grpc.NewServer()
	credsFuncs := []resolver.Credential{dockerconfig.NewDockerconfigKeychain(ctx)}
	fsOpts := []fs.Option{fs.WithMetricsLogLevel(logrus.InfoLevel), fs.WithMetadataStore(memorymetadata.NewReader)}
	rs, err := service.NewStargzSnapshotterService(ctx, *rootDir, &config,
		service.WithCredsFuncs(credsFuncs...), service.WithFilesystemOptions(fsOpts...))
	if err != nil {
		log.G(ctx).WithError(err).Fatalf("failed to configure snapshotter")
	}
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(rs))
	if err := os.MkdirAll(filepath.Dir(*address), 0700); err != nil {
		log.G(ctx).WithError(err).Fatal("socket directory")
	}
	if err := os.RemoveAll(*address); err != nil {
		log.G(ctx).WithError(err).Fatal("old socket")
	}
	l, err := net.Listen("unix", *address)
	if err != nil {
		log.G(ctx).WithError(err).Fatalf("failed to listen on %q", *address)
	}
	errCh := make(chan error, 1)
	go func() { errCh <- rpc.Serve(l) }()
	fmt.Fprintf(os.Stderr, "containerd-stargz-grpc ready: serving on %s\n", *address)
	sigCh := make(chan os.Signal, 1)
	signal.Notify(sigCh, unix.SIGINT, unix.SIGTERM)
	select {
	case s := <-sigCh:
		log.G(ctx).Infof("Got %v", s)
		if s == unix.SIGINT {
			rs.Close()
		}
	case err := <-errCh:
		log.G(ctx).WithError(err).Fatal("serving")
	}
	rpc.Stop() // closes the listener, which removes the socket
	log.G(ctx).Info("Exiting")
}
