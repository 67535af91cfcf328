// Command lapd is lap's control plane: the REST API, the session
// orchestrator and the durable conversation log. `lapd` serves, `lapd
// init` creates the master key, `lapd --help` lists every setting.
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr, newBackend))
}
