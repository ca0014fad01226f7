// grpc-peer: a real gRPC server and client (grpc-go) for kube-balancer's gRPC tests and
// benchmark. It serves grpc.testing.TestService and grpc.health.v1.Health, and calls them.
//
//	grpc-peer serve -listen 127.0.0.1:0 -name a [-cert FILE -key FILE]
//	    prints "listening ADDR", then "began UnaryCall" as a unary call's handler starts and an
//	    "event ..." line for each call the server ends, and
//	    reads commands from stdin: "health SERVICE SERVING|NOT_SERVING". With -cert and -key
//	    it serves over TLS (h2, as grpc-go does: ALPN h2 required), else h2c.
//	grpc-peer call -target ADDR -kind unary|server|client|bidi [-count N] [-size B]
//	    [-interval-ms MS] [-deadline-ms MS] [-delay-ms MS] [-code C -message TEXT]
//	    prints "msg I BACKEND" for each answer message as it comes, then one line
//	    "done code=C messages=N backend=B trailer=T message=TEXT".
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

var out = struct {
	sync.Mutex
	w *bufio.Writer
}{w: bufio.NewWriter(os.Stdout)}

// say writes one line to stdout at once: the tests read it as it comes.
func say(format string, args ...any) {
	out.Lock()
	defer out.Unlock()
	fmt.Fprintf(out.w, format+"\n", args...)
	out.w.Flush()
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: grpc-peer serve|call [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "call":
		call(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

type server struct {
	testpb.UnimplementedTestServiceServer
	name string
}

// begin sends the answer's header (x-backend) and sets a trailer, so that both can be checked
// on the far side of a proxy.
func (s *server) begin(ctx context.Context) {
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-backend", s.name))
	_ = grpc.SetTrailer(ctx, metadata.Pairs("x-trailer-backend", s.name))
}

// ended reports how a call ended: "event METHOD ok" or "event METHOD cancelled" and so on.
func ended(method string, err error) {
	switch {
	case err == nil:
		say("event %s ok", method)
	case status.Code(err) == codes.Canceled || err == context.Canceled:
		say("event %s cancelled", method)
	case status.Code(err) == codes.DeadlineExceeded || err == context.DeadlineExceeded:
		say("event %s deadline", method)
	default:
		say("event %s error %s", method, status.Code(err))
	}
}

func delay(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-delay-ms"); len(v) > 0 {
		ms, _ := strconv.Atoi(v[0])
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (s *server) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (resp *testpb.SimpleResponse, err error) {
	defer func() { ended("UnaryCall", err) }()
	s.begin(ctx)
	say("began UnaryCall")
	if err := delay(ctx); err != nil {
		return nil, err
	}
	if st := req.GetResponseStatus(); st != nil && st.Code != 0 {
		return nil, status.Error(codes.Code(st.Code), st.Message)
	}
	return &testpb.SimpleResponse{
		Hostname: s.name,
		Payload:  &testpb.Payload{Body: make([]byte, req.GetResponseSize())},
	}, nil
}

func (s *server) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream testpb.TestService_StreamingOutputCallServer) (err error) {
	defer func() { ended("StreamingOutputCall", err) }()
	s.begin(stream.Context())
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	for _, p := range req.GetResponseParameters() {
		if p.GetIntervalUs() > 0 {
			select {
			case <-time.After(time.Duration(p.GetIntervalUs()) * time.Microsecond):
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
			return err
		}
	}
	if st := req.GetResponseStatus(); st != nil && st.Code != 0 {
		return status.Error(codes.Code(st.Code), st.Message)
	}
	return nil
}

func (s *server) StreamingInputCall(stream testpb.TestService_StreamingInputCallServer) (err error) {
	defer func() { ended("StreamingInputCall", err) }()
	s.begin(stream.Context())
	total := 0
	count := 0
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			stream.SetTrailer(metadata.Pairs("x-count", strconv.Itoa(count)))
			return stream.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: int32(total)})
		}
		if err != nil {
			return err
		}
		count++
		total += len(req.GetPayload().GetBody())
	}
}

func (s *server) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) (err error) {
	defer func() { ended("FullDuplexCall", err) }()
	s.begin(stream.Context())
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		for _, p := range req.GetResponseParameters() {
			if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
				return err
			}
		}
	}
}

func serve(args []string) {
	flags := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := flags.String("listen", "127.0.0.1:0", "address to listen on")
	name := flags.String("name", "peer", "the name answers carry (x-backend)")
	maxStreams := flags.Uint("max-streams", 0, "SETTINGS_MAX_CONCURRENT_STREAMS (0: grpc-go's default)")
	certFile := flags.String("cert", "", "PEM certificate chain: serve over TLS (with -key)")
	keyFile := flags.String("key", "", "PEM private key of -cert")
	_ = flags.Parse(args)
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var opts []grpc.ServerOption
	if *maxStreams > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(uint32(*maxStreams)))
	}
	if *certFile != "" {
		creds, err := credentials.NewServerTLSFromFile(*certFile, *keyFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		opts = append(opts, grpc.Creds(creds))
	}
	srv := grpc.NewServer(opts...)
	testpb.RegisterTestServiceServer(srv, &server{name: *name})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	say("listening %s", lis.Addr())
	go func() {
		scanner := bufio.NewScanner(os.Stdin)
		for scanner.Scan() {
			fields := strings.Fields(scanner.Text())
			if len(fields) == 3 && fields[0] == "health" {
				service := fields[1]
				if service == "-" {
					service = ""
				}
				st := healthpb.HealthCheckResponse_NOT_SERVING
				if fields[2] == "SERVING" {
					st = healthpb.HealthCheckResponse_SERVING
				}
				hs.SetServingStatus(service, st)
				say("health %s %s", fields[1], st)
			}
		}
		// stdin closed: the test is gone.
		os.Exit(0)
	}()
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func call(args []string) {
	flags := flag.NewFlagSet("call", flag.ExitOnError)
	target := flags.String("target", "", "HOST:PORT to call (h2c)")
	kind := flags.String("kind", "unary", "unary, server, client or bidi")
	count := flags.Int("count", 1, "messages to send (client, bidi) or ask for (server)")
	size := flags.Int("size", 10, "payload bytes of each message")
	interval := flags.Int("interval-ms", 0, "time between the server's messages (server)")
	deadline := flags.Int("deadline-ms", 0, "the call's deadline (0: none)")
	delayMs := flags.Int("delay-ms", 0, "the server waits this long before answering (unary)")
	code := flags.Int("code", 0, "the status the server is asked to end with")
	message := flags.String("message", "", "the message of that status")
	authority := flags.String("authority", "", ":authority to send (default: the target)")
	_ = flags.Parse(args)

	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if *authority != "" {
		opts = append(opts, grpc.WithAuthority(*authority))
	}
	conn, err := grpc.NewClient("passthrough:///"+*target, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	client := testpb.NewTestServiceClient(conn)
	ctx := context.Background()
	if *deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(*deadline)*time.Millisecond)
		defer cancel()
	}
	if *delayMs > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-delay-ms", strconv.Itoa(*delayMs))
	}
	var echo *testpb.EchoStatus
	if *code != 0 {
		echo = &testpb.EchoStatus{Code: int32(*code), Message: *message}
	}
	var header, trailer metadata.MD
	messages := 0
	backend := func() string {
		if v := header.Get("x-backend"); len(v) > 0 {
			return v[0]
		}
		return "-"
	}
	got := func() {
		messages++
		say("msg %d %s", messages, backend())
	}
	params := func(n int) []*testpb.ResponseParameters {
		ps := make([]*testpb.ResponseParameters, n)
		for i := range ps {
			ps[i] = &testpb.ResponseParameters{Size: int32(*size), IntervalUs: int32(*interval * 1000)}
		}
		return ps
	}
	payload := &testpb.Payload{Body: make([]byte, *size)}
	switch *kind {
	case "unary":
		_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: int32(*size), Payload: payload, ResponseStatus: echo},
			grpc.Header(&header), grpc.Trailer(&trailer))
		if err == nil {
			got()
		}
	case "server":
		var stream testpb.TestService_StreamingOutputCallClient
		stream, err = client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: params(*count), ResponseStatus: echo})
		if err == nil {
			header, _ = stream.Header()
			for {
				if _, err = stream.Recv(); err != nil {
					break
				}
				got()
			}
			trailer = stream.Trailer()
			if err == io.EOF {
				err = nil
			}
		}
	case "client":
		var stream testpb.TestService_StreamingInputCallClient
		stream, err = client.StreamingInputCall(ctx)
		if err == nil {
			for i := 0; i < *count && err == nil; i++ {
				err = stream.Send(&testpb.StreamingInputCallRequest{Payload: payload})
			}
			var resp *testpb.StreamingInputCallResponse
			resp, err = stream.CloseAndRecv()
			header, _ = stream.Header()
			trailer = stream.Trailer()
			if err == nil {
				say("aggregated %d", resp.GetAggregatedPayloadSize())
				got()
			}
		}
	case "bidi":
		var stream testpb.TestService_FullDuplexCallClient
		stream, err = client.FullDuplexCall(ctx)
		if err == nil {
			// One message out, one back, in turn: each answer proves the stream is open both ways.
			for i := 0; i < *count && err == nil; i++ {
				if err = stream.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: params(1)}); err != nil {
					break
				}
				if _, err = stream.Recv(); err == nil {
					if header == nil {
						header, _ = stream.Header()
					}
					got()
				}
			}
			if err == nil {
				_ = stream.CloseSend()
				if _, err = stream.Recv(); err == io.EOF {
					err = nil
				}
			}
			trailer = stream.Trailer()
		}
	default:
		fmt.Fprintf(os.Stderr, "unknown kind %q\n", *kind)
		os.Exit(2)
	}
	st := status.Convert(err)
	trailerBackend := "-"
	if v := trailer.Get("x-trailer-backend"); len(v) > 0 {
		trailerBackend = v[0]
	}
	say("done code=%d messages=%d backend=%s trailer=%s message=%s", st.Code(), messages, backend(), trailerBackend, st.Message())
}
