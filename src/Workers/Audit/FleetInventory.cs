using Marten;
using SEmigrate.Contracts.Audit;

namespace SEmigrate.Workers.Audit;

/// <summary>The fleet inventory as `semigrate fleet` and host maintenance read it: the hosts' last reports
/// joined with the migrations' summaries.</summary>
public static class FleetInventory
{
    /// <summary>A VM of the fleet: where it runs (a main host that took it over, or a source's guest by
    /// name), its size, and its last migration when it had one.</summary>
    public sealed record FleetVm(string Host, Guid? Vm, string? Guest, long Pages, bool Running, Guid? LastMigration, string? LastState, DateTimeOffset? LastMigratedAt);

    public sealed record Fleet(IReadOnlyList<FleetHost> Hosts, IReadOnlyList<FleetVm> Vms);

    public static async Task<Fleet> ReadAsync(IDocumentStore store, CancellationToken ct)
    {
        await using var query = store.QuerySession();
        var hosts = (await query.Query<FleetHost>().ToListAsync(ct)).OrderBy(h => h.Host, StringComparer.Ordinal).ToList();
        var ids = hosts.SelectMany(h => h.Vms).Select(v => v.Vm).Distinct().ToArray();
        var last = ids.Length == 0 ? [] : (await query.Query<MigrationSummary>().Where(m => m.Vm.IsOneOf(ids)).ToListAsync(ct))
            .GroupBy(m => m.Vm).ToDictionary(g => g.Key, g => g.MaxBy(m => m.RequestedAt)!);
        FleetVm TakenOver(string at, VmSeen v)
        {
            var m = last.GetValueOrDefault(v.Vm);
            return new FleetVm(at, v.Vm, v.Guest, v.LocalPages + v.RemotePages, v.Running, m?.Id, m?.State.ToString(), m?.UpdatedAt);
        }
        var vms = hosts.SelectMany(h => h.Vms.Select(v => TakenOver(h.Host, v))
            .Concat(h.Guests.Select(g => new FleetVm(h.Host, null, g.Name, g.Pages, g.Running, null, null, null))))
            .ToList();
        return new Fleet(hosts, vms);
    }
}
