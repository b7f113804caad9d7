using System.CommandLine;
using System.Text.Json;
using Marten;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Roles;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate fleet`: the hosts as they last reported themselves, and the VMs on them with their
/// last migration, from the audit trail (the hosts' streams and the migrations' summaries).</summary>
public static class FleetCommand
{
    /// <summary>A VM of the fleet: where it runs (a main host that took it over, or a source's guest by
    /// name), its size, and its last migration when it had one.</summary>
    public sealed record FleetVm(string Host, Guid? Vm, string? Guest, long Pages, bool Running, Guid? LastMigration, string? LastState, DateTimeOffset? LastMigratedAt);

    public sealed record Fleet(IReadOnlyList<FleetHost> Hosts, IReadOnlyList<FleetVm> Vms);

    public static RootCommand AddFleetCommand(this RootCommand root)
    {
        var json = new Option<bool>("--json") { Description = "Print JSON: {\"hosts\":[...],\"vms\":[...]}" };
        var command = new Command("fleet", "Show the hosts (roles, room, last report) and the VMs on them (where, size, last migration)") { json };
        command.SetAction(async (parse, ct) =>
        {
            var builder = SemigrateHost.CreateBuilder();
            builder.AddAuditTrail();
            using var host = builder.Build();
            var fleet = await ReadAsync(host.Services.GetRequiredService<IDocumentStore>(), ct);
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(fleet, MigrateCommand.Json));
                return 0;
            }
            if (fleet.Hosts.Count == 0)
            {
                Console.WriteLine("no host has reported yet (host workers report when they start)");
                return 0;
            }
            var now = DateTimeOffset.UtcNow;
            Console.WriteLine($"{"host",-20} {"roles",-18} {"pages used/capacity",-22} last seen");
            foreach (var h in fleet.Hosts)
            {
                Console.WriteLine($"{h.Host,-20} {string.Join(",", h.Roles),-18} {$"{h.UsedPages}/{h.CapacityPages}",-22} {(now - h.LastSeen).TotalSeconds:0} s ago");
            }
            Console.WriteLine();
            Console.WriteLine($"{"vm",-38} {"at",-20} {"pages",-9} last migration");
            foreach (var v in fleet.Vms)
            {
                Console.WriteLine($"{(v.Vm?.ToString() ?? $"guest {v.Guest}"),-38} {v.Host,-20} {v.Pages,-9} " +
                    (v.LastMigration is { } m ? $"{m} {v.LastState} {v.LastMigratedAt:u}" : "none") + (v.Running ? "" : "  (not running)"));
            }
            return 0;
        });
        root.Subcommands.Add(command);
        return root;
    }

    public static async Task<Fleet> ReadAsync(IDocumentStore store, CancellationToken ct)
    {
        await using var query = store.QuerySession();
        var hosts = (await query.Query<FleetHost>().ToListAsync(ct)).OrderBy(h => h.Host, StringComparer.Ordinal).ToList();
        var ids = hosts.SelectMany(h => h.Vms).Select(v => v.Vm).Distinct().ToArray();
        var last = ids.Length == 0 ? [] : (await query.Query<MigrationSummary>().Where(m => m.Vm.IsOneOf(ids)).ToListAsync(ct))
            .GroupBy(m => m.Vm).ToDictionary(g => g.Key, g => g.MaxBy(m => m.RequestedAt)!);
        FleetVm TakenOver(string at, Contracts.Audit.VmSeen v)
        {
            var m = last.GetValueOrDefault(v.Vm);
            return new FleetVm(at, v.Vm, null, v.LocalPages + v.RemotePages, v.Running, m?.Id, m?.State.ToString(), m?.UpdatedAt);
        }
        var vms = hosts.SelectMany(h => h.Vms.Select(v => TakenOver(h.Host, v))
            .Concat(h.Guests.Select(g => new FleetVm(h.Host, null, g.Name, (long)g.MemoryMiB * 256, g.Running, null, null, null))))
            .ToList();
        return new Fleet(hosts, vms);
    }
}
