using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;
using SEmigrate.MemoryServer.Store;
using SEmigrate.TestSupport;

namespace SEmigrate.MemoryServer.Tests;

public class PagingRoundTripTests(RabbitMqFixture rabbit) : IClassFixture<RabbitMqFixture>
{
    [Theory]
    [InlineData(MigrationMode.Semigrate, false)]
    [InlineData(MigrationMode.Semigrate, true)]
    [InlineData(MigrationMode.AllEnc, false)]
    [InlineData(MigrationMode.NoEnc, false)]
    public async Task Store_page_in_page_out_and_release_are_bit_exact_for_every_class(MigrationMode mode, bool fileStore)
    {
        var folder = fileStore ? Directory.CreateTempSubdirectory("semigrate-store-").FullName : null;
        IPageStore? store = folder is null ? null : new FilePageStore(folder, 10_000);
        await using (var h = await PagingHarness.StartAsync(rabbit, mode, store))
        {
            await h.TransferAsync();
            var page = new byte[4096];
            for (ulong pfn = 0; pfn < PagingHarness.Pages; pfn++)
            {
                await h.Pager.PageInAsync(pfn, page);
                Assert.Equal(PagingHarness.GuestPage(pfn).Bytes, page);
            }
            Assert.Equal(
                mode switch { MigrationMode.Semigrate => [PageClass.Zero, PageClass.Plain, PageClass.Sealed], MigrationMode.AllEnc => [PageClass.Sealed], _ => new[] { PageClass.Plain } },
                Enumerable.Range(0, PagingHarness.Pages).Select(p => h.Table[(ulong)p].Class).Distinct().Order());

            // Page-out: new bytes, a new version, sealed (or plain in noenc) whatever the page was.
            foreach (ulong pfn in new ulong[] { 0, 1, 2 })
            {
                var written = Enumerable.Repeat((byte)(0xa0 + pfn), 4096).ToArray();
                await h.Pager.PageOutAsync(pfn, written);
                Assert.Equal(2UL, h.Table[pfn].Version);
                await h.Pager.PageInAsync(pfn, page);
                Assert.Equal(written, page);
            }

            var usage = await h.Client.UsageAsync(h.Host);
            Assert.Equal(PagingHarness.Pages, usage.UsedPages);
            Assert.Equal(PagingHarness.Pages, usage.PagesPerVm[h.Vm]);
            Assert.Equal(PagingHarness.Pages, await h.Client.ReleaseAsync(h.Host, h.Vm));
            Assert.Equal(0, (await h.Client.UsageAsync(h.Host)).UsedPages);
            await Assert.ThrowsAsync<PageProtocolException>(() => h.Pager.PageInAsync(2, page)); // a page with bytes: free ones are never fetched
            Assert.Empty(h.Violations);
        }
        if (folder is not null)
        {
            Assert.Empty(Directory.GetFiles(folder));
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public async Task A_file_store_keeps_its_pages_across_a_memory_server_restart()
    {
        var folder = Directory.CreateTempSubdirectory("semigrate-store-").FullName;
        var host = rabbit.Name("restart");
        Guid vm;
        PageRecord sealedPage;
        await using (var h = await PagingHarness.StartAsync(rabbit, MigrationMode.Semigrate, new FilePageStore(folder, 1000), host))
        {
            await h.TransferAsync();
            vm = h.Vm;
            sealedPage = PageFrame.ReadRecord(h.Server.Store.Get(vm, 2)!);
        }
        using var reopened = new FilePageStore(folder, 1000);
        Assert.Equal(PagingHarness.Pages, reopened.UsedPages);
        Assert.Equal(sealedPage.Body.ToArray(), PageFrame.ReadRecord(reopened.Get(vm, 2)!).Body.ToArray());
        Directory.Delete(folder, recursive: true);
    }

    [Fact]
    public async Task An_allenc_transfer_retried_sends_its_channel_key_again_and_every_page_stored_before_still_opens()
    {
        await using var h = await PagingHarness.StartAsync(rabbit, MigrationMode.AllEnc);
        await h.TransferAsync();
        // A retried transfer attempt starts by sending the channel key again (the same key, wrapped anew).
        var serverKey = await h.Client.StartVmAsync(h.Host, h.Vm, MigrationMode.AllEnc);
        await h.Client.SendChannelKeyAsync(h.Host, h.Vm, h.WrapChannelKey(serverKey));

        var page = new byte[4096];
        for (ulong pfn = 0; pfn < PagingHarness.Pages; pfn++)
        {
            await h.Pager.PageInAsync(pfn, page);
            Assert.Equal(PagingHarness.GuestPage(pfn).Bytes, page);
        }
        Assert.Empty(h.Violations);
    }
}
