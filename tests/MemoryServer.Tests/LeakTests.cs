using System.Text;
using SEmigrate.Contracts;
using SEmigrate.MemoryServer.Store;
using SEmigrate.TestSupport;

namespace SEmigrate.MemoryServer.Tests;

/// <summary>A known secret planted in pages that must be sealed never shows up in anything a sub-host
/// holds or receives in semigrate mode; the same scan finds it in noenc mode, so it can fail.</summary>
public class LeakTests(TracedRabbitMqFixture rabbit) : IClassFixture<TracedRabbitMqFixture>
{
    private const string Secret = "TOPSECRET-credit-card-4111111111111111";

    private static int Occurrences(byte[] haystack, byte[] needle)
    {
        var count = 0;
        for (var at = haystack.AsSpan().IndexOf(needle); at >= 0;)
        {
            count++;
            var next = haystack.AsSpan(at + 1).IndexOf(needle);
            at = next < 0 ? -1 : at + 1 + next;
        }
        return count;
    }

    private async Task<(int InStore, int InMessages, int PlainInStore)> RunAsync(MigrationMode mode)
    {
        var folder = Directory.CreateTempSubdirectory("semigrate-leak-").FullName;
        var host = rabbit.Name("leak");
        var tap = rabbit.Name("tap");
        var received = new List<byte[]>();
        var secret = Encoding.ASCII.GetBytes(Secret);
        (int, int, int) result;
        await using (var h = await PagingHarness.StartAsync(rabbit, mode, new FilePageStore(folder, 10_000), host))
        {
            // A tap on the broker's tracer: a copy of every message published in this virtual host (requests
            // and replies), as someone who sees the whole broker would.
            await using var channel = await rabbit.Connection.CreateChannelAsync();
            await channel.QueueDeclareAsync(tap, durable: false, exclusive: false, autoDelete: false);
            await channel.QueueBindAsync(tap, TracedRabbitMqFixture.TraceExchange, "publish.#");

            await h.TransferAsync(Secret);
            var page = new byte[4096];
            for (ulong pfn = 0; pfn < 12; pfn++)
            {
                await h.Pager.PageInAsync(pfn, page);
            }
            await h.Pager.PageOutAsync(5, PagingHarness.GuestPage(5, Secret).Bytes);

            while (await channel.BasicGetAsync(tap, autoAck: true) is { } message)
            {
                received.Add(message.Body.ToArray());
            }
            Assert.True(received.Count >= 5, $"the tap saw {received.Count} messages");
            var stored = Directory.GetFiles(folder).Select(File.ReadAllBytes).ToList();
            var plainMarker = PagingHarness.GuestPage(1).Bytes.AsSpan(0, 64).ToArray();
            result = (stored.Sum(s => Occurrences(s, secret)), received.Sum(m => Occurrences(m, secret)), stored.Sum(s => Occurrences(s, plainMarker)));
        }
        Directory.Delete(folder, recursive: true);
        return result;
    }

    [Fact]
    public async Task In_semigrate_mode_the_secret_is_nowhere_a_sub_host_can_look()
    {
        var (inStore, inMessages, plainInStore) = await RunAsync(MigrationMode.Semigrate);
        Assert.Equal(0, inStore);
        Assert.Equal(0, inMessages);
        Assert.True(plainInStore > 0, "plain pages travel as-is: the scan sees page bytes where they are");
    }

    [Fact]
    public async Task In_noenc_mode_the_same_scan_finds_it()
    {
        var (inStore, inMessages, _) = await RunAsync(MigrationMode.NoEnc);
        Assert.True(inStore > 0, "secret in the store folder");
        Assert.True(inMessages > 0, "secret in the messages");
    }
}
