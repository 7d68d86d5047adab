package api

import (
	_ "embed"
	"net/http"
)

// openAPIDoc describes every route; TestOpenAPICoversEveryRoute keeps it honest.
//
//go:embed openapi.json
var openAPIDoc []byte

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write(openAPIDoc)
}
