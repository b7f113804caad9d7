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
}
