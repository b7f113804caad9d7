using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using SEmigrate.Contracts.Audit;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workers.Processes;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>An orchestrator's auditor on queues of the test's own, torn down with its queues.</summary>
internal sealed class TestAuditor(IHost host) : IAsyncDisposable
{
    public IHost Host => host;

    /// <summary>Where a host sends the events of <paramref name="stream"/>.</summary>
    public Task<ISendEndpoint> SendEndpointAsync(Guid stream) =>
        host.Services.GetRequiredService<IBus>().GetSendEndpoint(host.Services.GetRequiredService<AuditRoute>().AddressOf(stream));

    public static async Task<TestAuditor> StartAsync(string schema, CancellationToken ct, int partitions = 8)
    {
        foreach (var (key, value) in await ServicesScript.SettingsAsync())
        {
            Environment.SetEnvironmentVariable(key, value);
        }
        TestOperator.Use(); // an auditor checks hosts' enrolments against the operator's key
        var queue = $"semigrate-audit-{Guid.NewGuid():N}"[..28];
        var host = Orchestrator.Build(StepPolicies.Default, new Dictionary<string, string?>
        {
            ["Postgres:Schema"] = schema,
            ["Audit:Queue"] = queue,
            ["Audit:Partitions"] = partitions.ToString(System.Globalization.CultureInfo.InvariantCulture),
        });
        await host.StartAsync(ct);
        return new TestAuditor(host);
    }

    public async ValueTask DisposeAsync()
    {
        var queues = host.Services.GetRequiredService<AuditRoute>().Queues.ToArray();
        await host.StopAsync(CancellationToken.None);
        host.Dispose();
        await WorkerFleet.DeleteQueuesAsync(new Uri((await ServicesScript.SettingsAsync())["SEMIGRATE__RabbitMq__Uri"]), [], [], queues,
            [.. queues, .. queues.Select(q => q + "_error")]); // with what the auditor refused
    }
}
