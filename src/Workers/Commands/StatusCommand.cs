using System.CommandLine;
using System.Text.Json;
using Marten;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Roles;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate status [ID]`: a migration's state from its audit stream's summary, or the recent ones.</summary>
public static class StatusCommand
{
    public static RootCommand AddStatusCommand(this RootCommand root)
    {
        var id = new Argument<Guid?>("ID") { Description = "A migration id (default: the 20 most recent migrations)", Arity = ArgumentArity.ZeroOrOne };
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var command = new Command("status", "Show a migration's state from the audit trail, or the recent migrations") { id, json };
        command.SetAction(async (parse, ct) =>
        {
            var builder = SemigrateHost.CreateBuilder();
            builder.AddAuditTrail();
            using var host = builder.Build();
            await using var query = host.Services.GetRequiredService<IDocumentStore>().QuerySession();
            IReadOnlyList<MigrationSummary> found = parse.GetValue(id) is { } one
                ? await query.LoadAsync<MigrationSummary>(one, ct) is { } s ? [s] : []
                : await query.Query<MigrationSummary>().OrderByDescending(m => m.RequestedAt).Take(20).ToListAsync(ct);
            if (found.Count == 0 && parse.GetValue(id) is { } missing)
            {
                await Console.Error.WriteLineAsync($"semigrate: no migration {missing} in the audit trail");
                return 1;
            }
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(found, MigrateCommand.Json));
                return 0;
            }
            var paging = found.Count == 0 ? [] : (await query.LoadManyAsync<VmPagingSummary>(ct, found.Select(m => m.Vm).Distinct())).ToDictionary(p => p.Id);
            foreach (var m in found)
            {
                Console.WriteLine($"{m.Id}  {m.State,-13} {m.Mode,-9} {m.Source} -> {m.Main} + {string.Join(", ", m.SubHosts)}  {m.RequestedAt:u}" +
                    (m.Pages is { } p ? $"  pages {p.Zero}/{p.Plain}/{p.Sealed} zero/plain/sealed" : "") +
                    (m.Transfers.Count > 0 ? $"  {m.Transfers.Count} transfers done" : "") +
                    (m.SecurityEvents > 0 ? $"  SECURITY EVENTS: {m.SecurityEvents} (pages that failed their check, steps refused)" : "") +
                    (m.AvailabilityEvents > 0 ? $"  AVAILABILITY EVENTS: {m.AvailabilityEvents} (pages a host did not serve)" : "") + (m.Reason is null ? "" : $"  reason: {m.Reason}"));
                if (paging.GetValueOrDefault(m.Vm) is { } v && m.State == MigrationState.SwitchedOver)
                {
                    Console.WriteLine($"  VM {m.Vm} runs at {v.Main}: {v.PagesIn} pages paged in ({v.BytesIn / 1048576.0:0.0} MiB), {v.PagesOut} paged out ({v.BytesOut / 1048576.0:0.0} MiB); " +
                        $"resident {v.ResidentPages / 256.0:0} MiB (peak {v.PeakResidentPages / 256.0:0}, share {v.BudgetPages / 256.0:0}); page-in p99 {v.LastPageInP99Ms:0.0} ms; as of {v.UpdatedAt:u}");
                }
            }
            if (found.Count == 0)
            {
                Console.WriteLine("no migrations yet");
            }
            return 0;
        });
        root.Subcommands.Add(command);
        return root;
    }
}
