using Temporalio.Client;
using Temporalio.Testing;
using Xunit;

namespace SEmigrate.TestSupport;

/// <summary>A Temporal server when one is configured: an address in SEMIGRATE_TEMPORAL_ADDRESS, or a
/// `temporal` CLI binary in SEMIGRATE_TEMPORAL_CLI that the SDK starts as a local dev server.
/// Otherwise <see cref="Client"/> is null and tests skip at run time with <see cref="SkipReason"/>.</summary>
public sealed class TemporalFixture : IAsyncLifetime
{
    public const string AddressVariable = "SEMIGRATE_TEMPORAL_ADDRESS";
    public const string CliVariable = "SEMIGRATE_TEMPORAL_CLI";

    private WorkflowEnvironment? environment;

    public ITemporalClient? Client { get; private set; }

    public string SkipReason { get; private set; } =
        $"no Temporal server configured: set {AddressVariable} (host:port) or {CliVariable} (path to a `temporal` binary)";

    public async ValueTask InitializeAsync()
    {
        var address = Environment.GetEnvironmentVariable(AddressVariable);
        var cli = Environment.GetEnvironmentVariable(CliVariable);
        if (!string.IsNullOrWhiteSpace(address))
        {
            Client = await TemporalClient.ConnectAsync(new TemporalClientConnectOptions(address));
        }
        else if (!string.IsNullOrWhiteSpace(cli))
        {
            environment = await WorkflowEnvironment.StartLocalAsync(new WorkflowEnvironmentStartLocalOptions
            {
                DevServerOptions = new() { ExistingPath = cli },
            });
            Client = environment.Client;
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (environment is not null)
        {
            await environment.ShutdownAsync();
        }
    }
}
