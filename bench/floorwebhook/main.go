// The floor for bench/webhook.py: the least a mutating admission webhook can do. It decodes the AdmissionReview,
// answers with a one-operation JSON Patch (the first container's image), and nothing else. Every mutating webhook
// pays what this one pays (the API server's TLS call, the JSON round trip), so kenv's added latency is judged
// against it. Standard library only.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"log"
	"net/http"
)

type review struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Request    *requestPayload `json:"request,omitempty"`
	Response   *response       `json:"response,omitempty"`
}

type requestPayload struct {
	UID string `json:"uid"`
}

type response struct {
	UID       string `json:"uid"`
	Allowed   bool   `json:"allowed"`
	PatchType string `json:"patchType"`
	Patch     []byte `json:"patch"` // encoding/json writes []byte as base64, as the API requires
}

func mutate(patch []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in review
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Request == nil {
			http.Error(w, "expected an AdmissionReview with a request", http.StatusBadRequest)
			return
		}
		out := review{APIVersion: in.APIVersion, Kind: in.Kind,
			Response: &response{UID: in.Request.UID, Allowed: true, PatchType: "JSONPatch", Patch: patch}}
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(out); err != nil {
			log.Print(err)
		}
	}
}

func main() {
	listen := flag.String("listen", ":8443", "address to serve HTTPS on")
	cert := flag.String("cert", "/tls/tls.crt", "serving certificate (PEM)")
	key := flag.String("key", "/tls/tls.key", "serving key (PEM)")
	image := flag.String("image", "floor.invalid/image@sha256:0000000000000000000000000000000000000000000000000000000000000000",
		"the image the patch sets")
	patchFlag := flag.String("patch", "", "a JSON Patch to answer with instead (bench/webhook.py gives it kenv's)")
	// The API server speaks HTTP/2 to a webhook that offers it, as net/http does; kenv's aiohttp server speaks
	// HTTP/1.1 only. With -http1 the floor offers only HTTP/1.1, to tell the protocol's share from the server's.
	http1 := flag.Bool("http1", false, "serve HTTP/1.1 only (no HTTP/2 offered in TLS ALPN)")
	flag.Parse()
	patch := []byte(*patchFlag)
	if *patchFlag == "" {
		var err error
		patch, err = json.Marshal([]map[string]string{{"op": "replace", "path": "/spec/containers/0/image", "value": *image}})
		if err != nil {
			log.Fatal(err)
		}
	} else if !json.Valid(patch) {
		log.Fatal("-patch is not valid JSON")
	}
	http.HandleFunc("/mutate", mutate(patch))
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	server := &http.Server{Addr: *listen}
	if *http1 {
		server.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	log.Fatal(server.ListenAndServeTLS(*cert, *key))
}
