using System.CommandLine;
using System.Text.Json;
using Marten;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Trust;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workers.Roles;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate vm list|stop`: the VMs that migrations moved, where each runs (from the audit
/// trail), and stopping one, which releases its pages at every host.</summary>
public static class VmCommand
{
    public static RootCommand AddVmCommand(this RootCommand root)
    {
        var vm = new Command("vm", "The VMs migrations moved: where each runs, and stopping one");
        vm.Subcommands.Add(List());
        vm.Subcommands.Add(Stop());
        root.Subcommands.Add(vm);
        return root;
    }

    private static Command List()
    {
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var command = new Command("list", "Every VM a migration moved that was not stopped since: its main host, where it came from, its paging") { json };
        command.SetAction(async (parse, ct) =>
        {
            using var host = AuditTrail();
            await using var query = host.Services.GetRequiredService<IDocumentStore>().QuerySession();
            var running = await RunningAsync(query, ct);
            var paging = running.Count == 0 ? [] : (await query.LoadManyAsync<VmPagingSummary>(ct, running.Select(m => m.Vm))).ToDictionary(p => p.Id);
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(running.Select(m => new { m.Vm, m.Main, m.Source, m.Mode, Migration = m.Id, Since = m.UpdatedAt, Paging = paging.GetValueOrDefault(m.Vm) }), MigrateCommand.Json));
                return 0;
            }
            foreach (var m in running)
            {
                var p = paging.GetValueOrDefault(m.Vm);
                Console.WriteLine($"{m.Vm}  at {m.Main} (from {m.Source}, {m.Mode}, migration {m.Id})" +
                    (p is null ? "" : $"  paged in {p.PagesIn}, out {p.PagesOut}, resident {p.ResidentPages / 256.0:0} MiB of {p.BudgetPages / 256.0:0}"));
            }
            if (running.Count == 0)
            {
                Console.WriteLine("no migrated VMs run");
            }
            return 0;
        });
        return command;
    }

    private static Command Stop()
    {
        var id = new Argument<Guid>("VM") { Description = "The VM's id (see `semigrate vm list`)" };
        var command = new Command("stop", "Stop a migrated VM at its main host and release its pages at every host") { id };
        command.SetAction(async (parse, ct) =>
        {
            var vm = parse.GetValue(id);
            using var host = Orchestrator.Build(StepPolicies.Default);
            await host.StartAsync(ct);
            try
            {
                await using var query = host.Services.GetRequiredService<IDocumentStore>().QuerySession();
                if ((await RunningAsync(query, ct)).FirstOrDefault(m => m.Vm == vm) is not { } migration)
                {
                    await Console.Error.WriteLineAsync($"semigrate: VM {vm} runs at no main host, as far as the audit trail knows");
                    return 1;
                }
                var stopped = await host.Services.GetRequiredService<EmbeddedSteps>().StopVmAsync(
                    OperatorAuthority.Sign(host.Services, new StopVm(migration.Id, vm, migration.Main)), ct);
                Console.WriteLine($"VM {vm} stopped at {migration.Main}; pages released: {string.Join(", ", stopped.Released.Select(r => $"{r.Host} {r.Pages}"))}");
                return 0;
            }
            catch (StepFailedException e)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 1;
            }
            finally
            {
                await host.StopAsync(CancellationToken.None);
            }
        });
        return command;
    }

    private static Microsoft.Extensions.Hosting.IHost AuditTrail()
    {
        var builder = SemigrateHost.CreateBuilder();
        builder.AddAuditTrail();
        return builder.Build();
    }

    /// <summary>The latest switched-over migration of each VM, unless the VM was stopped since.</summary>
    private static async Task<List<MigrationSummary>> RunningAsync(IQuerySession query, CancellationToken ct) =>
        [.. (await query.Query<MigrationSummary>().Where(m => m.State == MigrationState.SwitchedOver).ToListAsync(ct))
            .GroupBy(m => m.Vm).Select(g => g.OrderByDescending(m => m.RequestedAt).First()).Where(m => m.StoppedAt is null).OrderBy(m => m.RequestedAt)];
}
