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
/// two sub-host workers as separate processes, real RabbitMQ and PostgreSQL. The memory is checked by
/// digests that the source and the main host compute each on its own.</summary>
public class MigrationEndToEndTests(RealGuestFixture guest, PostgresFixture postgres) : IClassFixture<RealGuestFixture>, IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task A_split_migration_moves_every_page_once_checks_out_and_leaves_its_lifecycle_in_order()
    {
        var ct = TestContext.Current.CancellationToken;
        // The source's own copy of the guest: this test changes it after the migration.
        var guests = Directory.CreateTempSubdirectory("semigrate-e2e-guests-");
        var copy = Directory.CreateDirectory(Path.Combine(guests.FullName, "g1")).FullName;
        File.Copy(guest.Guest.DumpPath, Path.Combine(copy, "memory.elf"));
        File.Copy(guest.Guest.KernelPath, Path.Combine(copy, "vmlinuz"));
        try
        {
            await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, guests: guests.FullName);
            var request = run.Request(copy, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);

            var outcome = await run.MigrateAsync(request, ct);

            Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
            var verified = await MemoryCheck.CompareAsync(run.Steps, request.MigrationId, outcome.Placement!, ct);
            Assert.True(verified.Ok, $"{verified}");
            Assert.Equal(outcome.Pages!.Total, verified.Pages);
            Assert.True(verified.FetchedPages > 0, "some pages came back from sub-hosts");
            Assert.True(verified.FetchedPages < outcome.Pages.Total - outcome.SwitchOver!.LocalPages, "free pages are never fetched");

            // Each page crossed the broker once: the main host's share went to its own store, and free
            // pages did not travel at all, so semigrate's bytes are those of the non-free pages.
            var withBytes = outcome.Pages.Plain + outcome.Pages.Sealed;
            var sent = outcome.Transfers.Sum(t => t.Bytes);
            Assert.InRange(sent, withBytes * 4148, withBytes * 4148 + 65 * 40 * 1024);

            // Nothing a memory server holds (the main host's store included: its share is kept as it
            // arrived) shows the web app's memory (sealed) or the freed process's stale bytes (free pages
            // never travel; stale pages the buddy walk cannot vouch for, such as per-CPU lists, travel
            // sealed). The encrypted database's pages travel as-is by design, and the same scan finds
            // them, so it can fail.
            var storeFiles = new[] { run.Main, run.Sub1, run.Sub2 }.SelectMany(h => Directory.GetFiles(run.StoreOf(h), "*", SearchOption.AllDirectories)).ToList();
            // (A sub-host whose range is all free memory stores nothing: no file.)
            Assert.Contains(storeFiles, f => f.StartsWith(run.StoreOf(run.Main), StringComparison.Ordinal));
            Assert.Contains(storeFiles, f => !f.StartsWith(run.StoreOf(run.Main), StringComparison.Ordinal));
            var found = DiskSearch.Count([.. storeFiles], "WEBAPPMARK", "STALEMARK", "VAULTDBMARK");
            Assert.Equal(0, found["WEBAPPMARK"]);
            Assert.Equal(0, found["STALEMARK"]);
            Assert.True(found["VAULTDBMARK"] > 0, "the plain pages of vaultdb are found by the same scan");
            // Nor does the main host leave decrypted memory in its state folder (it used to write memory.img).
            var mainState = Directory.GetFiles(run.StateOf(run.Main), "*", SearchOption.AllDirectories);
            Assert.Equal(0, DiskSearch.Count(mainState, "WEBAPPMARK")["WEBAPPMARK"]);

            // A switch-over retried after its answer was lost finds the VM running and answers the same.
            var again = await run.Steps.SwitchOverAsync(run.Main, new SwitchOver(request.MigrationId, request.Vm, run.Main, request.Mode, [], outcome.Placement!), ct);
            Assert.Equal(outcome.SwitchOver, again);

            // The check can fail: one byte changed in the source's copy of a page it sent is found and named.
            var changed = FirstPageWithBytes(run, outcome.Placement!.Assignments.Skip(1));
            long offset;
            using (var memory = Guest.Memory.GuestMemory.Open(Path.Combine(copy, "memory.elf")))
            {
                var range = memory.Ranges.Single(r => (ulong)changed >= r.FirstPfn && (ulong)changed < r.EndPfn);
                offset = (long)(range.FileOffset + ((ulong)changed - range.FirstPfn) * 4096) + 7;
            }
            await using (var dump = File.Open(Path.Combine(copy, "memory.elf"), FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
            {
                dump.Position = offset;
                var b = dump.ReadByte();
                dump.Position--;
                dump.WriteByte((byte)~b);
            }
            var differs = await MemoryCheck.CompareAsync(run.Steps, request.MigrationId, outcome.Placement!, ct);
            Assert.False(differs.Ok);
            Assert.Equal(1, differs.MismatchedChunks);
            Assert.Equal([changed], differs.FirstMismatches);

            // A sub-host that alters a page is caught at the main host's next read of it: the read fails
            // naming host and page, and the audit trail records a security event.
            var liar = new[] { run.Sub2, run.Sub1 }.First(h => Directory.GetFiles(run.StoreOf(h), "*.pages").Length > 0);
            var (tampered, pfn) = TamperFirstRecord(run.StoreOf(liar));
            var refused = await Assert.ThrowsAsync<StepFailedException>(() => MemoryCheck.CompareAsync(run.Steps, request.MigrationId, outcome.Placement!, ct));
            Assert.Contains($"page 0x{pfn:x}", refused.Message, StringComparison.Ordinal);
            Assert.Contains(liar, refused.Message, StringComparison.Ordinal);

            Assert.Equal(outcome.Pages.Total, outcome.Transfers.Sum(t => t.Pages));
            Assert.Equal([run.Main, run.Sub1, run.Sub2], outcome.Placement!.Assignments.Select(a => a.Host));

            var summary = await Orchestrator.AuditedEndAsync(run.Host.Services, request.MigrationId, TimeSpan.FromSeconds(30), ct);
            Assert.Equal(MigrationState.SwitchedOver, summary?.State);
            await using var query = run.Host.Services.GetRequiredService<IDocumentStore>().QuerySession();
            var events = await EventuallyAsync(query, request.MigrationId, e => e.OfType<PageCheckFailed>().Any(), ct);
            Assert.Equal(
                [nameof(MigrationRequested), nameof(PagesPlaced), nameof(PagingServersStarted), nameof(GuestIntrospected), nameof(PagesClassified),
                 nameof(DestinationTransferred), nameof(DestinationTransferred), nameof(DestinationTransferred), nameof(MigrationSwitchedOver), nameof(PageCheckFailed)],
                events.Where(e => e is not IJournalEvent).Select(e => e.GetType().Name));
            var security = events.OfType<PageCheckFailed>().Single();
            Assert.Equal((liar, (long)pfn, run.Main), (security.Host, security.Pfn, security.Main));
            Assert.Contains("tag does not verify", security.Problem, StringComparison.Ordinal);
            Assert.True(tampered);

            // `semigrate status` reads the same summary, security events included.
            var environment = new Dictionary<string, string>(await ServicesScript.SettingsAsync()) { ["SEMIGRATE__Postgres__Schema"] = postgres.Schema };
            var status = await SemigrateProcess.RunAsync(environment, "status", request.MigrationId.ToString());
            Assert.Equal(0, status.ExitCode);
            Assert.Contains($"{request.MigrationId}  SwitchedOver", status.Stdout, StringComparison.Ordinal);
            Assert.Contains("3 transfers done", status.Stdout, StringComparison.Ordinal);
            Assert.Contains("SECURITY EVENTS: 1", status.Stdout, StringComparison.Ordinal);
            var unknown = await SemigrateProcess.RunAsync(environment, "status", Guid.NewGuid().ToString());
            Assert.Equal(1, unknown.ExitCode);
            Assert.Contains("in the audit trail", unknown.Stderr, StringComparison.Ordinal);

            var classified = events.OfType<PagesClassified>().Single();
            var guestPages = outcome.Pages.Total;
            Assert.Equal(guestPages, classified.Zero + classified.Plain + classified.Sealed);
            Assert.Equal(guestPages, events.OfType<DestinationTransferred>().Sum(t => t.Pages));
            Assert.Equal(guestPages, events.OfType<PagesPlaced>().Single().Assignments.Sum(a => a.Pages));
            await run.AssertAuditedAsync(request.MigrationId, ct);
        }
        finally
        {
            guests.Delete(recursive: true);
        }
    }

    /// <summary>The first page of these assignments that travelled with bytes, as the source's map says.</summary>
    private static long FirstPageWithBytes(MigrationRun run, IEnumerable<Assignment> assignments)
    {
        var dir = Directory.GetDirectories(Path.Combine(run.StateOf(run.Source), "migrations")).Single();
        var map = Introspection.Classification.ClassificationMap.Load(Path.Combine(dir, "classes.map"));
        return assignments.SelectMany(a => Enumerable.Range(0, (int)(a.EndPfn - a.FirstPfn)).Select(i => a.FirstPfn + i))
            .First(p => map.IsGuestPage((ulong)p) && map[(ulong)p] != PageClass.Zero);
    }

    /// <summary>Flips one byte in the body of the first record of a file store (what a hostile sub-host
    /// administrator could do); returns its page number.</summary>
    private static (bool Tampered, ulong Pfn) TamperFirstRecord(string storeFolder)
    {
        var file = Directory.GetFiles(storeFolder, "*.pages").Single();
        using var stream = File.Open(file, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        var header = new byte[24];
        stream.ReadExactly(header);
        stream.Position = 24 + 100;
        var b = stream.ReadByte();
        stream.Position--;
        stream.WriteByte((byte)~b);
        return (header[0] is 1 or 2, BitConverter.ToUInt64(header, 8));
    }

    private static async Task<IReadOnlyList<object>> EventuallyAsync(IQuerySession query, Guid stream, Func<IReadOnlyList<object>, bool> done, CancellationToken ct)
    {
        for (var i = 0; ; i++)
        {
            var events = (await query.Events.FetchStreamAsync(stream, token: ct)).Select(e => e.Data).ToList();
            if (done(events) || i == 100)
            {
                return events;
            }
            await Task.Delay(100, ct);
        }
    }
}
