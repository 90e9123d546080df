// Command appliance is the Portico daemon and its command-line tools:
// `appliance run` serves, `appliance validate` checks a configuration,
// `appliance show` reads the running daemon over gNMI (mgmt/gnmi),
// `appliance version` prints the build.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"portico.dev/appliance/control/config"
)

// DefaultConfigPath is where the daemon looks for its configuration.
const DefaultConfigPath = "/etc/appliance/appliance.yaml"

// exitError carries an exit code out of a command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func main() {
	if err := newRoot().Execute(); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "appliance:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "appliance",
		Short:         "Portico edge appliance for Kubernetes networking",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var configPath string
	root.PersistentFlags().StringVar(&configPath, "config", DefaultConfigPath, "configuration file")
	root.AddCommand(runCmd(&configPath), validateCmd(&configPath), versionCmd(), showCmd(&configPath))
	return root
}

// printConfigErrors prints "path.to.field: reason" lines for a refused
// configuration and returns the error that makes the command exit 1.
func printConfigErrors(err error) error {
	var fe config.Errors
	if errors.As(err, &fe) {
		for _, e := range fe {
			fmt.Fprintln(os.Stderr, e.Error())
		}
		return exitError{1}
	}
	fmt.Fprintln(os.Stderr, err)
	return exitError{1}
}

func validateCmd(configPath *string) *cobra.Command {
	return &cobra.Command{
		Use:   "validate",
		Short: "Check a configuration file: exit 0, or exit 1 printing path.to.field: reason lines",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, _, src, err := loadConfig(*configPath)
			if err != nil {
				return printConfigErrors(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", src)
			return nil
		},
	}
}

// loadConfig reads the file, or the embedded default when the file does
// not exist. It returns the configuration, its text and where it came from.
func loadConfig(path string) (*config.Config, []byte, string, error) {
	c, data, err := config.Load(path)
	if err == nil {
		return c, data, path, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, path, err
	}
	c, err = config.Parse(configsDefault(), os.Environ())
	return c, configsDefault(), "embedded default", err
}
