using Marten;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>The whole split migration on the embedded engine: a real guest dump, a source, a main and
/// two sub-host workers as separate processes, real RabbitMQ and PostgreSQL.</summary>
public class MigrationEndToEndTests(RealGuestFixture guest, PostgresFixture postgres) : IClassFixture<RealGuestFixture>, IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task A_split_migration_moves_every_page_checks_out_and_leaves_its_lifecycle_in_order()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct);
        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);

        var outcome = await new MigrationProcedure(run.Steps).RunAsync(request, ct);

        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        var verify = new VerifyMemory(request.MigrationId, request.Vm, request.GuestDir,
            run.MapOf(request.MigrationId));
        var verified = await run.Steps.VerifyAsync(run.Main, verify, ct);
        Assert.Equal(0, verified.Mismatches);
        Assert.Equal(outcome.Pages!.Total, verified.Pages);
        Assert.True(verified.FetchedPages > 0, "some pages came back from sub-hosts");

        // Nothing a sub-host holds shows the web app's memory (sealed) or the freed process's stale bytes
        // (free pages never travel; stale pages the buddy walk cannot vouch for, such as per-CPU lists,
        // travel sealed). The encrypted database's pages travel as-is by design, and the same scan finds
        // them, so it can fail.
        var subHostFiles = new[] { run.Sub1, run.Sub2 }.SelectMany(h => Directory.GetFiles(run.StoreOf(h), "*", SearchOption.AllDirectories)).ToList();
        Assert.NotEmpty(subHostFiles);
        var found = Occurrences([.. subHostFiles], "WEBAPPMARK", "STALEMARK", "VAULTDBMARK");
        var atMain = Occurrences([outcome.SwitchOver!.ImagePath], "VAULTDBMARK");
        Assert.Equal(0, found["WEBAPPMARK"]);
        Assert.Equal(0, found["STALEMARK"]);
        Assert.True(found["VAULTDBMARK"] + atMain["VAULTDBMARK"] > 0, "the plain pages of vaultdb are found by the same scan");

        // A switch-over retried after its answer was lost finds the VM running and answers the same.
        var again = await run.Steps.SwitchOverAsync(run.Main, new SwitchOver(request.MigrationId, request.Vm, run.Main, request.Mode, [], verify.MapPath, outcome.Placement!), ct);
        Assert.Equal(outcome.SwitchOver, again);

        // The check can fail: one changed byte in a page at the main host is found and named.
        var changed = outcome.Placement!.Assignments[0].FirstPfn + 100;
        await using (var image = File.Open(outcome.SwitchOver!.ImagePath, FileMode.Open, FileAccess.ReadWrite))
        {
            image.Position = changed * 4096 + 7;
            var b = image.ReadByte();
            image.Position--;
            image.WriteByte((byte)~b);
        }
        var tampered = await run.Steps.VerifyAsync(run.Main, verify, ct);
        Assert.Equal(1, tampered.Mismatches);
        Assert.Equal([changed], tampered.FirstMismatches);
        Assert.Equal(outcome.Pages.Total, outcome.Transfers.Sum(t => t.Pages));
        Assert.Equal([run.Main, run.Sub1, run.Sub2], outcome.Placement!.Assignments.Select(a => a.Host));

        var summary = await Orchestrator.AuditedEndAsync(run.Host.Services, request.MigrationId, TimeSpan.FromSeconds(30), ct);
        Assert.Equal(MigrationState.SwitchedOver, summary?.State);
        await using var query = run.Host.Services.GetRequiredService<IDocumentStore>().QuerySession();
        var events = (await query.Events.FetchStreamAsync(request.MigrationId, token: ct)).Select(e => e.Data).ToList();
        Assert.Equal(
            [nameof(MigrationRequested), nameof(GuestIntrospected), nameof(PagesClassified), nameof(PagesPlaced), nameof(PagingServersStarted),
             nameof(DestinationTransferred), nameof(DestinationTransferred), nameof(DestinationTransferred), nameof(MigrationSwitchedOver)],
            events.Select(e => e.GetType().Name));
        // `semigrate status` reads the same summary.
        var environment = new Dictionary<string, string>(await ServicesScript.SettingsAsync()) { ["SEMIGRATE__Postgres__Schema"] = postgres.Schema };
        var status = await SemigrateProcess.RunAsync(environment, "status", request.MigrationId.ToString());
        Assert.Equal(0, status.ExitCode);
        Assert.Contains($"{request.MigrationId}  SwitchedOver", status.Stdout, StringComparison.Ordinal);
        Assert.Contains("3 transfers done", status.Stdout, StringComparison.Ordinal);
        var unknown = await SemigrateProcess.RunAsync(environment, "status", Guid.NewGuid().ToString());
        Assert.Equal(1, unknown.ExitCode);
        Assert.Contains("in the audit trail", unknown.Stderr, StringComparison.Ordinal);

        var classified = events.OfType<PagesClassified>().Single();
        var guestPages = outcome.Pages.Total;
        Assert.Equal(guestPages, classified.Zero + classified.Plain + classified.Sealed);
        Assert.Equal(guestPages, events.OfType<DestinationTransferred>().Sum(t => t.Pages));
        Assert.Equal(guestPages, events.OfType<PagesPlaced>().Single().Assignments.Sum(a => a.Pages));
    }

    [Theory]
    [InlineData(MigrationMode.AllEnc)]
    [InlineData(MigrationMode.NoEnc)]
    public async Task The_baselines_rebuild_the_same_memory_at_the_main_host(MigrationMode mode)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct);
        var request = run.Request(guest.Guest.Directory, mode, mainCapacity: 20000, subCapacity: 30000);

        var outcome = await new MigrationProcedure(run.Steps).RunAsync(request, ct);

        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        var verified = await run.Steps.VerifyAsync(run.Main, new VerifyMemory(request.MigrationId, request.Vm, request.GuestDir,
            run.MapOf(request.MigrationId)), ct);
        Assert.Equal(0, verified.Mismatches);
        Assert.Equal(outcome.Pages!.Total, verified.Pages);
        // The baselines send every page's bytes, free ones too: more on the wire than semigrate would.
        Assert.True(outcome.Transfers.Sum(t => t.Bytes) > outcome.Pages.Total * 4096L, $"{outcome.Transfers.Sum(t => t.Bytes)} bytes");
    }

    /// <summary>Counts markers in files of any size (store files are large and sparse) in one pass, in
    /// chunks that overlap by the longest marker's length so that none is missed at a boundary.</summary>
    private static Dictionary<string, long> Occurrences(IEnumerable<string> files, params string[] markers)
    {
        var needles = markers.Select(System.Text.Encoding.ASCII.GetBytes).ToArray();
        var counts = markers.ToDictionary(m => m, _ => 0L);
        var overlap = needles.Max(n => n.Length) - 1;
        var buffer = new byte[16 << 20];
        foreach (var file in files)
        {
            using var stream = File.OpenRead(file);
            var kept = 0;
            int read;
            while ((read = stream.Read(buffer, kept, buffer.Length - kept)) > 0)
            {
                var span = buffer.AsSpan(0, kept + read);
                for (var i = 0; i < needles.Length; i++)
                {
                    // A match wholly inside the kept tail was counted in the chunk before.
                    var rest = span;
                    var offset = 0;
                    for (int at; (at = rest.IndexOf(needles[i])) >= 0; rest = rest[(at + 1)..])
                    {
                        offset += at + 1;
                        if (offset - 1 + needles[i].Length > kept)
                        {
                            counts[markers[i]]++;
                        }
                    }
                }
                kept = Math.Min(overlap, span.Length);
                span[^kept..].CopyTo(buffer);
            }
        }
        return counts;
    }
}
