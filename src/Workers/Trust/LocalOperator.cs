using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using SEmigrate.Sealing;
using SEmigrate.Workers.Processes;
using SEmigrate.Workers.Settings;

namespace SEmigrate.Workers.Trust;

/// <summary>The operator of the demo and the trials, which start every host on this machine: it makes its
/// key on first use (Trust:OperatorKeyFile), has the workers it starts pin it, and enrols them from the
/// identities they write to their state folders.</summary>
public static class LocalOperator
{
    /// <summary>The settings that make a worker pin this operator's key (made now if there is none).</summary>
    public static Dictionary<string, string> WorkerEnvironment(IServiceProvider services)
    {
        var trust = services.GetRequiredService<IOptions<TrustOptions>>().Value;
        OperatorKey.Create(trust.OperatorKeyFile);
        using var key = OperatorKey.Load(trust.OperatorKeyFile);
        return new(StringComparer.Ordinal) { ["SEMIGRATE__Trust__OperatorKey"] = Convert.ToBase64String(key.PublicKey) };
    }

    public static async Task EnrolAsync(IServiceProvider services, WorkerFleet fleet, CancellationToken ct)
    {
        using var key = OperatorAuthority.LoadKey(services.GetRequiredService<IOptions<TrustOptions>>().Value);
        var store = services.GetRequiredService<Marten.IDocumentStore>();
        foreach (var file in fleet.IdentityFiles)
        {
            await OperatorAuthority.EnrolAsync(store, key, HostIdentity.Read(file), ct);
        }
        await services.GetRequiredService<Roles.HostRoutes>().BindAsync(ct); // their events reach the audit trail from now on
    }

    /// <summary>For the hosts of a run that are gone for good: their queues and exchanges leave the broker
    /// (with the queues of <paramref name="vms"/> they served), and their enrolments go, so that no
    /// orchestrator routes them again.</summary>
    public static async Task ForgetAsync(IServiceProvider services, IReadOnlyList<string> hosts, IEnumerable<Guid> vms)
    {
        await WorkerFleet.DeleteQueuesAsync(services.GetRequiredService<IOptions<RabbitMqOptions>>().Value.Uri!, hosts, vms,
            auditQueues: services.GetRequiredService<Contracts.Audit.AuditRoute>().Queues);
        var store = services.GetRequiredService<Marten.IDocumentStore>();
        await using var session = store.LightweightSession();
        foreach (var host in hosts)
        {
            session.Delete<HostEnrolment>(host);
        }
        await session.SaveChangesAsync();
        using var key = OperatorAuthority.LoadKey(services.GetRequiredService<IOptions<TrustOptions>>().Value);
        EnrolmentLedger.Forget(key, store.Options.DatabaseSchemaName, hosts); // their keys went with their state folders
    }
}
