using System.CommandLine;
using System.Text.Json;
using Marten;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Roles;
using SEmigrate.Workflows;
using Temporalio.Common;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate audit ID | --history FILE`: checks a migration from its stream alone, or a Temporal
/// workflow history (MigrationAudit); exit 0 when every invariant holds, 1 when one does not, 2 when
/// there is no such migration or file.</summary>
public static class AuditCommand
{
    public static RootCommand AddAuditCommand(this RootCommand root)
    {
        var id = new Argument<Guid?>("ID") { Description = "A migration id (`semigrate status` lists them)", Arity = ArgumentArity.ZeroOrOne };
        var history = new Option<FileInfo?>("--history") { Description = "Audit a Temporal workflow history instead (`temporal workflow show --output json`)" };
        var json = new Option<bool>("--json") { Description = "Print the report as one JSON object" };
        var command = new Command("audit", "Audit a migration from its event stream (the hash chain, a replay of the procedure, its invariants), or a Temporal history")
        {
            id, history, json,
        };
        command.SetAction(async (parse, ct) =>
        {
            AuditReport? report;
            if (parse.GetValue(history) is { } file)
            {
                if (parse.GetValue(id) is not null || !file.Exists)
                {
                    await Console.Error.WriteLineAsync(file.Exists ? "semigrate: give a migration id or --history, not both" : $"semigrate: --history: no file {file.FullName}");
                    return 2;
                }
                WorkflowHistory workflow;
                try
                {
                    workflow = WorkflowHistory.FromJson(Path.GetFileNameWithoutExtension(file.Name), await File.ReadAllTextAsync(file.FullName, ct));
                }
                catch (Exception e) when (e is System.Text.Json.JsonException or Google.Protobuf.InvalidJsonException or Google.Protobuf.InvalidProtocolBufferException or FormatException)
                {
                    await Console.Error.WriteLineAsync($"semigrate: --history: {file.Name} is not a workflow history: {e.Message}");
                    return 2;
                }
                if (MigrationHistory.NotAMigration(workflow) is { } why)
                {
                    await Console.Error.WriteLineAsync($"semigrate: --history: {file.Name} is not a migration's history: {why}");
                    return 2;
                }
                report = await MigrationAudit.CheckHistoryAsync(workflow, ct);
            }
            else if (parse.GetValue(id) is { } migration)
            {
                var builder = SemigrateHost.CreateBuilder();
                builder.AddAuditTrail();
                using var host = builder.Build();
                if ((report = await MigrationAudit.RunAsync(host.Services.GetRequiredService<IDocumentStore>(), host.Services.GetRequiredService<AuditSeal>(), migration, ct)) is null)
                {
                    await Console.Error.WriteLineAsync($"semigrate: no migration {migration} in the audit trail");
                    return 2;
                }
            }
            else
            {
                await Console.Error.WriteLineAsync("semigrate: audit: give a migration id, or --history FILE");
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
