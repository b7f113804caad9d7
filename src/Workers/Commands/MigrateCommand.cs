using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workflows;
using Microsoft.Extensions.Options;
using SEmigrate.Workers.Settings;
using SEmigrate.Workers.Trust;
using Spectre.Console;
using Temporalio.Client;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate migrate`: starts a split migration on the embedded engine and follows it, with a
/// progress bar per destination, until it switches over or is undone.</summary>
public static class MigrateCommand
{
    public const string Name = "migrate";

    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        WriteIndented = false,
        Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter(JsonNamingPolicy.CamelCase) },
    };

    public static RootCommand AddMigrateCommand(this RootCommand root)
    {
        var guest = new Option<string>("--guest") { Description = "The VM at the source: the name of a guest in the source worker's --guests folder (made by `semigrate guest boot`)", Required = true };
        var source = new Option<string>("--source") { Description = "The source host (its worker runs with --role source)", Required = true };
        var main = new Option<string>("--main") { Description = "NAME:SIZE: the main host and how much of the VM it may take (e.g. main-1:96M, or pages)", Required = true };
        var sub = new Option<string[]>("--sub") { Description = "NAME:SIZE: a sub-host and how much it may hold (repeatable)" };
        var mode = new Option<string>("--mode") { Description = "semigrate (seal what can hold secrets), allenc (the baseline), noenc", DefaultValueFactory = _ => "semigrate" };
        var plain = new Option<string[]>("--plain-process") { Description = "A process whose memory is already encrypted and may travel as-is (repeatable)" };
        var vm = new Option<Guid?>("--vm") { Description = "The VM's id (default: a new one)" };
        var json = new Option<bool>("--json") { Description = "Print the outcome as one JSON object" };
        var command = new Command(Name, "Migrate a VM from its source to a main host plus sub-hosts (their workers must be running) and follow it")
        {
            guest, source, main, sub, mode, plain, vm, json,
        };
        command.SetAction(async (parse, ct) =>
        {
            MigrationRequest request;
            try
            {
                request = new MigrationRequest(Guid.NewGuid(), parse.GetValue(vm) ?? Guid.NewGuid(), parse.GetValue(guest)!,
                    parse.GetValue(source)!, ParseDestination(parse.GetValue(main)!), [.. (parse.GetValue(sub) ?? []).Select(ParseDestination)],
                    MigrationModes.Parse(parse.GetValue(mode)!), parse.GetValue(plain) ?? []);
            }
            catch (FormatException e)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 2;
            }
            using var host = Orchestrator.Build(StepPolicies.Default);
            await host.StartAsync(ct);
            try
            {
                request = await OperatorAuthority.SignAsync(host.Services, request, ct);
            }
            catch (InvalidOperationException e)
            {
                await Console.Error.WriteLineAsync($"semigrate: cannot sign the request: {e.Message}");
                return 2;
            }
            var temporal = host.Services.GetRequiredService<IOptions<TemporalOptions>>().Value.IsConfigured;
            using var interruption = new Interruption(canDetach: temporal, line => Console.Error.WriteLine($"semigrate: {line}"));
            MigrationOutcome? outcome;
            try
            {
                outcome = await FollowAsync(host.Services, request, quiet: parse.GetValue(json), interruption.Cancelled, interruption.Detached);
            }
            catch (VmBusyException e)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 2;
            }
            await host.StopAsync(CancellationToken.None);
            if (outcome is null)
            {
                await Console.Error.WriteLineAsync($"semigrate: detached; migration {request.MigrationId} goes on (`semigrate status {request.MigrationId}`)");
                return 3;
            }
            Console.WriteLine(parse.GetValue(json) ? JsonSerializer.Serialize(outcome, Json) : Describe(outcome));
            return outcome.State == MigrationState.SwitchedOver ? 0 : 1;
        });
        root.Subcommands.Add(command);
        return root;
    }

    /// <summary>Runs the migration (on Temporal when one is configured, else on the embedded engine) and
    /// shows its stages and a bar per destination on standard error. <paramref name="ct"/> cancels the
    /// migration (it compensates, and this waits for that); <paramref name="detach"/> stops following it
    /// (Temporal only), and then the outcome is null.</summary>
    public static async Task<MigrationOutcome?> FollowAsync(IServiceProvider services, MigrationRequest request, bool quiet, CancellationToken ct,
        CancellationToken detach = default)
    {
        Func<MigrationState> state;
        IReadOnlyList<TransferProgress> signalled = []; // on Temporal, what the Progress query says besides the transfers' events
        Task<MigrationOutcome> migration;
        if (services.GetRequiredService<IOptions<TemporalOptions>>().Value is { IsConfigured: true } temporal)
        {
            var client = await TemporalClient.ConnectAsync(temporal.ConnectOptions());
            WorkflowHandle<MigrationWorkflow, MigrationOutcome> handle;
            try
            {
                handle = await client.StartWorkflowAsync((MigrationWorkflow w) => w.RunAsync(request), MigrationWorkflow.StartOptions(request));
            }
            catch (Temporalio.Exceptions.WorkflowAlreadyStartedException)
            {
                throw new VmBusyException($"VM {request.Vm} is being migrated already (workflow migration-{request.Vm}): one migration of a VM at a time");
            }
            var last = MigrationState.Requested;
            state = () => last;
            migration = handle.GetResultAsync();
            ct.Register(() => _ = handle.SignalAsync(w => w.CancelAsync(new CancelMigration("cancelled by the operator"))));
            _ = Task.Run(async () =>
            {
                while (!migration.IsCompleted)
                {
                    try
                    {
                        var progress = await handle.QueryAsync(w => w.Progress());
                        (last, signalled) = (progress.State, progress.Live ?? []);
                    }
                    catch (Temporalio.Exceptions.TemporalException)
                    {
                        // A query can fail while the workflow finishes or a worker restarts: try again.
                    }
                    await Task.Delay(500, CancellationToken.None);
                }
            }, CancellationToken.None);
        }
        else
        {
            MigrationProcedure? procedure = null;
            state = () => procedure?.Progress.State ?? MigrationState.Requested;
            migration = services.GetRequiredService<EmbeddedEngine>().RunAsync(request, p => procedure = p, ct);
        }
        var watch = services.GetRequiredService<TransferWatch>();
        if (quiet)
        {
            await Task.WhenAny(migration, Task.Delay(Timeout.Infinite, detach));
            return migration.IsCompleted ? await migration : null;
        }
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        console.MarkupLineInterpolated($"migration [bold]{request.MigrationId}[/] of VM {request.Vm}: {request.Source} -> {request.Main.Host} + {string.Join(", ", request.SubHosts.Select(s => s.Host))} ({request.Mode.ToWireName()})");
        var stage = MigrationState.Requested;
        await console.Progress().AutoClear(false).HideCompleted(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .StartAsync(async ctx =>
            {
                var bars = new Dictionary<string, ProgressTask>(StringComparer.Ordinal);
                while (true)
                {
                    var now = state();
                    if (now != stage)
                    {
                        stage = now;
                        console.MarkupLineInterpolated($"  [grey]{now}[/]");
                    }
                    foreach (var p in watch.Of(request.MigrationId).Concat(signalled).GroupBy(p => p.Host).Select(g => g.MaxBy(p => (p.Round, p.PagesSent))!))
                    {
                        if (!bars.TryGetValue(p.Host, out var bar))
                        {
                            bars[p.Host] = bar = ctx.AddTask(p.Host, maxValue: Math.Max(1, p.PagesTotal));
                        }
                        bar.Value = p.PagesSent;
                    }
                    if (migration.IsCompleted || detach.IsCancellationRequested)
                    {
                        break;
                    }
                    await Task.WhenAny(migration, Task.Delay(200, CancellationToken.None));
                }
            });
        return detach.IsCancellationRequested && !migration.IsCompleted ? null : await migration;
    }

    public static string Describe(MigrationOutcome o)
    {
        var lines = new List<string> { $"migration {o.MigrationId}: {o.State}{(o.Reason is null ? "" : $": {o.Reason}")}" };
        if (o.Pages is { } p)
        {
            lines.Add($"pages: {p.Zero} zero, {p.Plain} plain, {p.Sealed} sealed ({p.Total})");
        }
        lines.AddRange(o.Transfers.OrderBy(t => t.Host, StringComparer.Ordinal).Select(t =>
            $"  {t.Host,-16} {t.Pages,9} pages {t.Bytes / 1048576.0,9:0.0} MiB{(t.Attempts > 1 ? $"  ({t.Attempts} attempts, {t.ResentBytes / 1048576.0:0.0} MiB resent)" : "")}"));
        return string.Join(Environment.NewLine, lines);
    }

    /// <summary>NAME:SIZE, SIZE in pages or with a unit (K, M, G: bytes, made pages).</summary>
    public static Destination ParseDestination(string text)
    {
        var at = text.LastIndexOf(':');
        if (at <= 0 || at == text.Length - 1)
        {
            throw new FormatException($"'{text}' is not NAME:SIZE (e.g. sub-1:512M or sub-1:131072)");
        }
        var size = text[(at + 1)..].Trim().ToUpperInvariant();
        var factor = size[^1] switch { 'K' => 1L << 10, 'M' => 1L << 20, 'G' => 1L << 30, _ => 0 };
        var digits = factor == 0 ? size : size[..^1];
        if (!long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out var n))
        {
            throw new FormatException($"'{text}': '{text[(at + 1)..]}' is not a size (pages, or a number with K, M or G)");
        }
        return new Destination(text[..at], factor == 0 ? n : n * factor / 4096);
    }
}
