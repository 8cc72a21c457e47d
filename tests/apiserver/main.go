// The test API server: upstream apiextensions-apiserver with discovery switched on and the
// built-in kinds the operator writes (builtin.go) served next to the CRDs.
//
// Upstream leaves /apis discovery to kube-aggregator, which this test setup does not run;
// kube-rs and kubectl need discovery, so this program completes the upstream configuration and
// turns it on before building the server. The OpenAPI models cover the CRD API and the built-in
// kinds (generated from k8s.io/api into ota-test-apiserver/builtinopenapi by apiserver.sh), which
// server-side apply needs for managed fields. Everything else is the upstream server as packaged.
package main

import (
	"context"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/apiextensions-apiserver/pkg/apiserver"
	"k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	extensionsopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/util/openapi"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/component-base/cli"
	"k8s.io/kube-openapi/pkg/common"

	"ota-test-apiserver/builtinopenapi"
)

// openAPIDefinitions are the CRD API's definitions plus those of the built-in kinds.
func openAPIDefinitions(ref common.ReferenceCallback) map[string]common.OpenAPIDefinition {
	definitions := extensionsopenapi.GetOpenAPIDefinitions(ref)
	for name, definition := range builtinopenapi.GetOpenAPIDefinitions(ref) {
		definitions[name] = definition
	}
	return definitions
}

func run(ctx context.Context, o *options.CustomResourceDefinitionsServerOptions) error {
	config, err := o.Config()
	if err != nil {
		return err
	}
	// As upstream's options.Config does, with the built-in kinds' definitions added.
	config.GenericConfig.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(
		openapi.GetOpenAPIDefinitionsWithoutDisabledFeatures(openAPIDefinitions),
		openapinamer.NewDefinitionNamer(apiserver.Scheme, scheme.Scheme))
	completed := config.Complete()
	completed.GenericConfig.EnableDiscovery = true
	server, err := completed.New(genericapiserver.NewEmptyDelegate())
	if err != nil {
		return err
	}
	if err := installBuiltinKinds(server.GenericAPIServer, *o.RecommendedOptions.Etcd, config.GenericConfig); err != nil {
		return err
	}
	return server.GenericAPIServer.PrepareRun().RunWithContext(ctx)
}

func main() {
	ctx := genericapiserver.SetupSignalContext()
	o := options.NewCustomResourceDefinitionsServerOptions(os.Stdout, os.Stderr)
	cmd := &cobra.Command{
		Use:   "ota-test-apiserver",
		Short: "The API server used by ota-operator's integration tests: CRDs and a few built-in kinds",
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return o.ServerRunOptions.ComponentGlobalsRegistry.Set()
		},
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.Complete(); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return run(c.Context(), o)
		},
	}
	cmd.SetContext(ctx)
	o.AddFlags(cmd.Flags())
	os.Exit(cli.Run(cmd))
}
