package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"golang.org/x/term"
)

// loginCmd is `lap login`: ask for the URL and master key, check them
// against the server, save them.
type loginCmd struct {
	URL string `help:"Server URL; asked for when not given (default ${default_url})." placeholder:"URL"`
}

// Help explains what login reads when stdin is not a terminal.
func (loginCmd) Help() string {
	return "On a terminal lap login asks for the URL and the key (the key is not echoed). " +
		"With stdin not a terminal it reads the URL (unless --url is given) and then the key, one line each, " +
		"so `printf '%s\\n' \"$KEY\" | lap login --url http://lapd:3000` works in scripts. " +
		"Nothing is saved unless the server accepts the key."
}

// Run asks, verifies and saves.
func (c *loginCmd) Run(ctx context.Context, a *app) error {
	dir, err := lapDir(a.env.Getenv)
	if err != nil {
		return err
	}
	old, err := loadProfile(dir)
	if err != nil {
		old = Profile{}
	}
	in := bufio.NewReader(a.in)
	rawURL := c.URL
	if rawURL == "" {
		def := DefaultURL
		if old.URL != "" {
			def = old.URL
		}
		if a.inTTY {
			fmt.Fprintf(a.out, "lap URL [%s]: ", def)
		}
		line, err := readLine(in)
		if err != nil && !(errors.Is(err, io.EOF) && line != "") {
			return withCode(ExitUsage, fmt.Errorf("read URL: %w", err))
		}
		rawURL = line
		if rawURL == "" {
			rawURL = def
		}
	}
	u, err := normalizeURL(rawURL)
	if err != nil {
		return withCode(ExitUsage, err)
	}
	key, err := readKey(a, in)
	if err != nil {
		return err
	}
	if key == "" {
		return withCode(ExitUsage, errors.New("no master key given; lapd prints it at its first start (make run), or see MASTER_KEY"))
	}
	if err := verifyLogin(ctx, NewClient(u, key)); err != nil {
		return err
	}
	if err := saveProfile(dir, Profile{URL: u, MasterKey: key}); err != nil {
		return err
	}
	fmt.Fprintf(a.out, "✓ logged in to %s (saved in %s)\n", u, profilePath(dir))
	return nil
}

// readKey asks for the master key without echo on a terminal, else reads
// one line.
func readKey(a *app, in *bufio.Reader) (string, error) {
	if f, ok := a.in.(interface{ Fd() uintptr }); ok && a.inTTY {
		fmt.Fprint(a.out, "Master key: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(a.out)
		if err != nil {
			return "", fmt.Errorf("read master key: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	line, err := readLine(in)
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", withCode(ExitUsage, fmt.Errorf("read master key from stdin: %w", err))
	}
	return line, nil
}

// readLine reads one line without its line ending.
func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	return strings.TrimSpace(line), err
}

// verifyLogin makes one authenticated call; a rejected key or an
// unreachable server comes back as the usual errors.
func verifyLogin(ctx context.Context, c *Client) error {
	return c.do(ctx, http.MethodGet, "/agents", url.Values{"limit": {"1"}}, nil, nil)
}

// logoutCmd is `lap logout`.
type logoutCmd struct{}

// Run removes the saved login.
func (logoutCmd) Run(a *app) error {
	dir, err := lapDir(a.env.Getenv)
	if err != nil {
		return err
	}
	p, _ := loadProfile(dir)
	err = os.Remove(profilePath(dir))
	switch {
	case errors.Is(err, os.ErrNotExist):
		fmt.Fprintln(a.out, "not logged in")
		return nil
	case err != nil:
		return fmt.Errorf("log out: %w", err)
	}
	if p.URL != "" {
		fmt.Fprintf(a.out, "logged out of %s\n", p.URL)
	} else {
		fmt.Fprintln(a.out, "logged out")
	}
	return nil
}

// configCmd is `lap config`.
type configCmd struct {
	JSON bool `help:"Print JSON."`
}

type configView struct {
	URL       string `json:"url"`
	URLFrom   string `json:"url_from"`
	MasterKey string `json:"master_key"`
	KeyFrom   string `json:"master_key_from"`
	File      string `json:"file"`
}

// Run shows the server and key the CLI would use, the key masked.
func (c *configCmd) Run(a *app) error {
	t, err := a.target()
	if err != nil {
		return err
	}
	dir, err := lapDir(a.env.Getenv)
	if err != nil {
		return err
	}
	v := configView{URL: t.URL, URLFrom: t.URLFrom, MasterKey: maskKey(t.Key), KeyFrom: orDash(t.KeyFrom), File: profilePath(dir)}
	if c.JSON {
		return writeJSON(a.out, v)
	}
	fmt.Fprintf(a.out, "url         %s  (from %s)\n", v.URL, v.URLFrom)
	if t.Key == "" {
		fmt.Fprintf(a.out, "master key  (none: run `lap login` or set %s)\n", EnvKey)
	} else {
		fmt.Fprintf(a.out, "master key  %s  (from %s)\n", v.MasterKey, v.KeyFrom)
	}
	fmt.Fprintf(a.out, "login file  %s\n", v.File)
	return nil
}
