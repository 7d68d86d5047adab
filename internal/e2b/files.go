package e2b

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
)

// envd's REST file routes: GET /files streams a file out, POST /files writes one
// (octet-stream, optionally gzip-encoded) or several (multipart, one part named "file"
// per file, its filename the destination when the query names no path). Bytes are
// streamed to the agent, never held whole; each file lands atomically (the agent
// writes a temporary file and renames it), so a failed upload leaves no part-file.

// UploadInfo is one written file, as envd answers a write.
type UploadInfo struct {
	Name string `json:"name"`
	Type string `json:"type"`
	Path string `json:"path"`
}

func (s *Server) fileError(w http.ResponseWriter, err error) {
	code, msg := s.status(err)
	if code == http.StatusRequestEntityTooLarge {
		code = http.StatusInsufficientStorage
	}
	writeError(w, code, "%s", msg)
}

func (s *Server) fileRead(w http.ResponseWriter, r *http.Request) {
	c := callOf(r.Context())
	p := r.URL.Query().Get("path")
	if p == "" {
		writeError(w, http.StatusBadRequest, "path is required")
		return
	}
	body, info, err := s.o.Sandboxes.ReadFile(r.Context(), c.id, p, c.user)
	if err != nil {
		s.fileError(w, err)
		return
	}
	defer body.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(info.Size, 10))
	h.Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": info.Name}))
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, body); err != nil {
		s.log.Warn("e2b file read cut short", "sandbox", c.id, "path", p, "err", err)
	}
}

func (s *Server) fileWrite(w http.ResponseWriter, r *http.Request) {
	c := callOf(r.Context())
	for k := range r.Header {
		if strings.HasPrefix(strings.ToLower(k), "x-metadata-") {
			writeError(w, http.StatusBadRequest, "file metadata (X-Metadata-*) is not supported by this Vulcan server")
			return
		}
	}
	dest := r.URL.Query().Get("path")
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		writeError(w, http.StatusUnsupportedMediaType, "Content-Type must be multipart/form-data or application/octet-stream")
		return
	}
	var written []UploadInfo
	put := func(p string, rd io.Reader) error {
		info, err := s.o.Sandboxes.WriteFile(r.Context(), c.id, p, c.user, 0, rd, 0)
		if err != nil {
			return err
		}
		written = append(written, UploadInfo{Name: path.Base(info.Path), Type: "file", Path: info.Path})
		return nil
	}
	switch mt {
	case "application/octet-stream":
		if dest == "" {
			writeError(w, http.StatusBadRequest, "path is required for an octet-stream upload")
			return
		}
		var body io.Reader = r.Body
		switch enc := strings.ToLower(r.Header.Get("Content-Encoding")); enc {
		case "", "identity":
		case "gzip":
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				writeError(w, http.StatusBadRequest, "the body is not gzip: %v", err)
				return
			}
			defer zr.Close()
			body = zr
		default:
			writeError(w, http.StatusUnsupportedMediaType, "Content-Encoding %q: want gzip or none", clipPath(enc))
			return
		}
		if err := put(dest, body); err != nil {
			s.fileError(w, err)
			return
		}
	case "multipart/form-data":
		if params["boundary"] == "" {
			writeError(w, http.StatusBadRequest, "multipart body without a boundary")
			return
		}
		mr, err := r.MultipartReader()
		if err != nil {
			writeError(w, http.StatusBadRequest, "multipart: %v", err)
			return
		}
		for n := 0; ; n++ {
			part, err := mr.NextRawPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				writeError(w, http.StatusBadRequest, "multipart: %v", err)
				return
			}
			if n >= 1000 {
				writeError(w, http.StatusBadRequest, "at most 1000 files per upload")
				return
			}
			if part.FormName() != "file" {
				part.Close()
				continue
			}
			p := dest
			if p == "" || len(written) > 0 {
				// Several files: each part names its destination. (Part.FileName would
				// keep only the last element; the SDK sends the whole path.)
				_, dp, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
				if p = dp["filename"]; p == "" {
					writeError(w, http.StatusBadRequest, "part %d has no filename to write it to (and the query no path)", n)
					return
				}
				if dest != "" {
					writeError(w, http.StatusBadRequest, "a query path names one file; this upload has several (omit path to use each part's filename)")
					return
				}
			}
			err = put(p, part)
			part.Close()
			if err != nil {
				s.fileError(w, fmt.Errorf("%s: %w", clipPath(p), err))
				return
			}
		}
		if len(written) == 0 {
			writeError(w, http.StatusBadRequest, "the multipart body has no part named \"file\"")
			return
		}
	default:
		writeError(w, http.StatusUnsupportedMediaType, "Content-Type %q: want multipart/form-data or application/octet-stream", clipPath(mt))
		return
	}
	writeJSON(w, http.StatusOK, written)
}
