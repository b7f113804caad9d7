using Marten;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Roles;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Embedded;

/// <summary>The process that runs migrations on the embedded engine (`migrate`, `demo`, the tests):
/// configuration as every command reads it, plus overrides.</summary>
public static class Orchestrator
{
    public static IHost Build(StepPolicies policies, IReadOnlyDictionary<string, string?>? overrides = null)
    {
        var builder = SemigrateHost.CreateBuilder();
        if (overrides is not null)
        {
            builder.Configuration.AddInMemoryCollection(overrides);
        }
        builder.AddOrchestrator(policies);
        return builder.Build();
    }

    /// <summary>Waits until the auditor has recorded the migration's end (it consumes events
    /// asynchronously); null if it has not within <paramref name="timeout"/>.</summary>
    public static async Task<MigrationSummary?> AuditedEndAsync(IServiceProvider services, Guid migrationId, TimeSpan timeout, CancellationToken ct)
    {
        var store = services.GetRequiredService<IDocumentStore>();
        var until = DateTime.UtcNow + timeout;
        while (true)
        {
            await using var query = store.QuerySession();
            var summary = await query.LoadAsync<MigrationSummary>(migrationId, ct);
            if (summary?.State is MigrationState.SwitchedOver or MigrationState.Compensated or MigrationState.Refused || DateTime.UtcNow > until)
            {
                return summary?.State is MigrationState.SwitchedOver or MigrationState.Compensated or MigrationState.Refused ? summary : null;
            }
            await Task.Delay(200, ct);
        }
    }
}
