package cli_test

import (
	"os"
	"testing"
	"time"

	"lap.dev/lap/cli/clitest"
	"lap.dev/lap/control/api"
)

func TestManualFakeTmp(t *testing.T) {
	if os.Getenv("LAP_MANUAL") == "" {
		return
	}
	f := clitest.NewServer(t)
	f.AddAgent(api.CreateAgentRequest{Name: "my-sdk-agent", HarnessID: "claude-agent-sdk"})
	os.WriteFile("/tmp/fake.env", []byte("export LAP_URL="+f.URL+" LAP_MASTER_KEY="+f.Key+"\n"), 0o644)
	for i := 0; i < 1200; i++ {
		if _, err := os.Stat("/tmp/fake.stop"); err == nil {
			return
		}
		time.Sleep(time.Second)
	}
}
