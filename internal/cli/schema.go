package cli

import (
	"github.com/spf13/cobra"

	"github.com/poolmanagerd/pool-managerd/schema"
)

func newSchemaCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "schema",
		Short: "Print the CUE schema that configs are checked against",
		Long: `schema prints the CUE schema built into this pool-managerd, so that the plain cue
tool can check a config repository with the same rules (everything but the
checks that need the whole inventory, which only validate does):

  pool-managerd schema > /tmp/poolmanagerd.cue
  cue vet -c /tmp/poolmanagerd.cue $(find -L DIR -name '*.cue' -not -path '*/.*' -not -path '*/cue.mod/*')`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := cmd.OutOrStdout().Write(schema.SchemaSource())
			return err
		},
	}
}
