using System.CommandLine;
using System.Text.Json;
using Marten;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Roles;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate audit ID`: checks a migration from its stream alone (MigrationAudit); exit 0 when
/// every invariant holds, 1 when one does not, 2 when there is no such migration.</summary>
public static class AuditCommand
{
    public static RootCommand AddAuditCommand(this RootCommand root)
    {
        var id = new Argument<Guid>("ID") { Description = "A migration id (`semigrate status` lists them)" };
        var json = new Option<bool>("--json") { Description = "Print the report as one JSON object" };
        var command = new Command("audit", "Audit a migration from its event stream: the hash chain, a replay of the procedure, and its invariants") { id, json };
        command.SetAction(async (parse, ct) =>
        {
            var builder = SemigrateHost.CreateBuilder();
            builder.AddAuditTrail();
            using var host = builder.Build();
            var migration = parse.GetValue(id);
            if (await MigrationAudit.RunAsync(host.Services.GetRequiredService<IDocumentStore>(), migration, ct) is not { } report)
            {
                await Console.Error.WriteLineAsync($"semigrate: no migration {migration} in the audit trail");
                return 2;
            }
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(new { report.MigrationId, report.State, report.Ok, report.SecurityEvents, report.Verdicts }, MigrateCommand.Json));
            }
            else
            {
                Console.WriteLine($"migration {report.MigrationId}: {report.State}");
                foreach (var v in report.Verdicts)
                {
                    Console.WriteLine($"  {(v.Ok ? "ok    " : "FAILED")}  {v.Invariant}: {v.Detail}");
                }
                Console.WriteLine($"  security events recorded: {report.SecurityEvents}");
                Console.WriteLine(report.Ok ? "audit passed" : "AUDIT FAILED");
            }
            return report.Ok ? 0 : 1;
        });
        root.Subcommands.Add(command);
        return root;
    }
}
