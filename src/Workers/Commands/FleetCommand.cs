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
    public static RootCommand AddFleetCommand(this RootCommand root)
    {
        var json = new Option<bool>("--json") { Description = "Print JSON: {\"hosts\":[...],\"vms\":[...]}" };
        var command = new Command("fleet", "Show the hosts (roles, room, last report) and the VMs on them (where, size, last migration)") { json };
        command.SetAction(async (parse, ct) =>
        {
            var builder = SemigrateHost.CreateBuilder();
            builder.AddAuditTrail();
            using var host = builder.Build();
            var fleet = await FleetInventory.ReadAsync(host.Services.GetRequiredService<IDocumentStore>(), ct);
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
                Console.WriteLine($"{h.Host,-20} {string.Join(",", h.Roles),-18} {$"{h.UsedPages}/{h.CapacityPages}",-22} {(now - h.LastSeen).TotalSeconds:0} s ago" +
                    (h.RefusedRequests is { Count: > 0 } refused ? $"  refused requests: {string.Join(", ", refused.Select(r => $"{r.Key} {r.Value}"))}" : ""));
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
}
